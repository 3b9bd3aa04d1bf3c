"""Instant feedback on a learner's own functions: property tests with diagnostics.

Each checker calls your function on small fixed inputs, prints one line per
property (``✓`` passed, ``✗`` failed, with a hint on the likely mistake) and returns
True when all passed. A wrong answer, even one that crashes, never raises; only
misuse of the checker itself does. ``log_var`` is log sigma^2 and ``x`` a batch of
binary images (batch, 784).

- distributions: ``kl_standard_normal``, ``log_prob``, ``posterior``,
  ``mixture_prior_log_prob``, ``monte_carlo_kl``
- reparameterization: ``reparameterize``, ``encoder_head``
- losses: ``negative_elbo``, ``elbo_estimate``, ``conditional_negative_elbo``,
  ``beta_vae_loss``
- bounds: ``log_likelihood_estimate`` (on ``LinearGaussianVAE``), ``iwae_bound``,
  ``quadrature_log_likelihood``, ``bits_per_dim``
- models: ``conv_vae``, ``interpolation``

``score(checker, fn, points=...)`` turns a checker's report into marks: the share of
its checks that passed, as the graded assignments (assignments/) count them.

A topic's module is imported the first time one of its checkers is used.
"""

import importlib

_TOPICS = {
    "distributions": ("kl_standard_normal", "log_prob", "posterior",
                      "mixture_prior_log_prob", "monte_carlo_kl"),
    "reparameterization": ("reparameterize", "encoder_head"),
    "losses": ("negative_elbo", "elbo_estimate", "conditional_negative_elbo",
               "beta_vae_loss"),
    "bounds": ("LinearGaussianVAE", "log_likelihood_estimate", "iwae_bound",
               "quadrature_log_likelihood", "bits_per_dim"),
    "models": ("conv_vae", "interpolation"),
    "grading": ("score",),
}
_MODULE_OF = {name: module for module, names in _TOPICS.items() for name in names}
# The loss checkers' default model and images, which tests reuse.
_MODULE_OF["_default_model_and_images"] = "_fixtures"

__all__ = sorted(name for names in _TOPICS.values() for name in names)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_MODULE_OF[name]}", __name__)
    return getattr(module, name.removeprefix("_"))


def __dir__():
    return sorted(set(globals()) | set(__all__))
