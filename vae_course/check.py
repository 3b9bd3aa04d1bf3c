r"""Instant feedback on a learner's own functions: property tests with diagnostics.

Each checker calls the function you wrote on small fixed inputs, compares it with
``torch.distributions`` and the helpers of :mod:`vae_course.elbo`, prints one line
per property (``✓`` passed, ``✗`` failed, with a hint on the likely mistake) and
returns ``True`` when everything passed. A wrong answer never raises: a function
that crashes is reported like any other mistake. Only misuse of the checker itself
(passing something that is not callable, an unknown option) raises.

=================================  ================================================
checker                            the function it expects
=================================  ================================================
:func:`kl_standard_normal`         ``fn(mu, log_var) -> (batch,)``, or
                                   ``fn(posterior)``
:func:`reparameterize`             ``fn(mu, log_var) -> z``, same shape as ``mu``
:func:`log_prob`                   ``fn(value, logits)`` (Bernoulli),
                                   ``fn(value, loc, scale)`` or
                                   ``fn(value, loc, log_var)`` (Normal)
:func:`negative_elbo`              ``fn(model, x) -> scalar loss`` (batch mean)
:func:`mixture_prior_log_prob`     ``fn(z, logits, means, log_vars) -> (batch,)``
:func:`monte_carlo_kl`             ``fn(posterior, prior) -> (batch,)``
:func:`log_likelihood_estimate`    ``fn(model, x, K) -> (batch,)``,
                                   importance-sampled log p(x)
:func:`conditional_negative_elbo`  ``fn(model, x, y) -> scalar loss`` for a
                                   conditional VAE, ``y`` the int64 labels
:func:`bits_per_dim`               ``fn(log_p) -> (batch,)`` bits per dimension,
                                   from a log-probability (or a dequantized
                                   log-density)
:func:`iwae_bound`                 ``fn(model, x, k) -> (batch,)``, the k-sample
                                   bound
:func:`quadrature_log_likelihood`  ``fn(model, x, axis) -> log p(x)`` of one image
                                   of a model with two latent units
:func:`beta_vae_loss`              ``fn(reconstruction, kl, step, beta,
                                   warmup_steps) -> (loss, negative_elbo)``
:func:`conv_vae`                   an ``encoder`` and a ``decoder`` (not a
                                   function): their shapes, layer by layer, for
                                   28x28 images
:func:`elbo_estimate`              ``fn(model, x) -> test -ELBO`` (an evaluation)
:func:`encoder_head`               ``head(h) -> (mu, log_var)``, the last encoder
                                   layer
:func:`posterior`                  ``fn(mu, log_var) -> q(z|x)``, a distribution
:func:`interpolation`              ``fn(model, x_a, x_b, steps) -> (steps, 784)``
=================================  ================================================

Here ``log_var`` is :math:`\log\sigma^2`, one per latent unit, and ``x`` a batch of
binary images of shape (batch, 784).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)

from .distributions import NUM_LEVELS
from .elbo import LOG_2PI, elbo_terms, log_importance_weights
from .elbo import kl_standard_normal as kl_of_posterior
from .elbo import negative_elbo as reference_negative_elbo
from .evaluate import bits_per_dim as nats_to_bits_per_dim
from .gaps import codes_of, log_joint
from .models import IMAGE_SIZE, VAE, build_vae, is_conditional
from .train import warmup_weight

__all__ = ["LinearGaussianVAE", "beta_vae_loss", "bits_per_dim",
           "conditional_negative_elbo", "conv_vae", "elbo_estimate", "encoder_head",
           "interpolation", "iwae_bound", "kl_standard_normal",
           "log_likelihood_estimate", "log_prob", "mixture_prior_log_prob",
           "monte_carlo_kl", "negative_elbo", "posterior", "quadrature_log_likelihood",
           "reparameterize"]

PASS, FAIL = "✓", "✗"
# Hints shared by several checkers.
USE_RSAMPLE = ("use rsample (or loc + scale * eps with eps = torch.randn_like(loc)), "
               "not sample: sample() draws under torch.no_grad().")
LOG_VAR_IS_ANY_REAL = ("it returned nan or inf: log_var is log sigma^2 and can be any "
                       "real number; sigma = exp(0.5 * log_var), so do not take the "
                       "log or the square root of log_var itself.")


class _Report:
    """Prints one line per property as it is decided and counts the failures."""

    def __init__(self, title: str):
        self.failures = 0
        self.checks = 0
        print(title)

    def ok(self, what: str) -> None:
        self.checks += 1
        print(f"  {PASS} {what}")

    def fail(self, what: str, hint: str) -> None:
        self.checks += 1
        self.failures += 1
        print(f"  {FAIL} {what}")
        for line in hint.splitlines():
            print(f"      {line}")

    def note(self, text: str) -> None:
        """A line of information (a shape, a value), neither passed nor failed."""
        print(f"      {text}")

    def finish(self) -> bool:
        if self.failures:
            print(f"{self.failures} of {self.checks} checks failed.")
        else:
            print(f"All {self.checks} checks passed.")
        return self.failures == 0


class _Crashed:
    """Stands for the result of a learner's function that raised."""


def _call(report: _Report, fn: Callable, *args, what: str = "your function runs"):
    """``fn(*args)``, or a reported failure (and ``_Crashed``) when it raises."""
    try:
        return fn(*args)
    except Exception as error:  # a learner's bug, reported rather than raised
        report.fail(what, f"it raised {type(error).__name__}: {error}")
        return _Crashed()


@contextmanager
def _seeded():
    """Draw from a stream seeded with 0, and leave the learner's own stream as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _require_callable(fn) -> None:
    if not callable(fn):
        raise TypeError(f"pass your function itself (no parentheses); "
                        f"got {type(fn).__name__}")


def _is_tensor(report: _Report, result, expected: str) -> bool:
    if isinstance(result, _Crashed):
        return False
    if not isinstance(result, torch.Tensor):
        report.fail(f"returns a tensor ({expected})",
                    f"it returned {type(result).__name__}; return a torch.Tensor "
                    "(no .item(), no NumPy) so that gradients can flow through it")
        return False
    return True


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    a, b = a.detach().double(), b.detach().double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


def _listed(values: torch.Tensor, digits: int = 4) -> str:
    return str([round(v, digits) for v in values.detach().double().flatten().tolist()])


# --------------------------------------------------------------------------- KL


def _kl_closed_form(mu, log_var):
    """The package's closed-form KL, from a mean and a log-variance: (batch,)."""
    return kl_of_posterior(Independent(Normal(mu, (0.5 * log_var).exp()), 1))


def _kl_hint(result, mu, log_var) -> str:
    """What the learner's KL most likely got wrong, from the numbers alone."""
    expected = _kl_closed_form(mu, log_var)
    latent_dim = mu.shape[-1]
    log_sq = log_var.square().log()
    candidates = [
        (-expected, "KL has the wrong sign: it is exactly minus the KL. "
                    "KL(q || p) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2) >= 0."),
        (expected / latent_dim,
         f"KL is {latent_dim}x too small: did you average over the latent units "
         "(.mean) instead of summing (.sum(dim=-1))?"),
        (0.5 * (mu**2 + log_var.square() - 1 - log_sq).sum(-1),
         "Your function treats its second argument as sigma, but it is log sigma^2 "
         "(the log-variance). If you passed sigma where log sigma^2 was expected, "
         "this is what comes out: sigma^2 = log_var.exp(), log sigma^2 = log_var."),
        (0.5 * (mu**2 + (2 * log_var).exp() - 1 - 2 * log_var).sum(-1),
         "Your function treats log sigma^2 as log sigma: the variance is "
         "log_var.exp(), not (2 * log_var).exp()."),
        (2 * expected, "KL is 2x too large: the factor 1/2 is missing."),
        (expected / 2, "KL is 2x too small: the factor 1/2 was applied twice."),
        (expected + latent_dim / 2,
         "KL is too large by latent_dim / 2 per example: the -1 inside the sum "
         "is missing."),
        (expected - 0.5 * (mu**2).sum(-1), "The mu^2 term is missing."),
    ]
    for candidate, hint in candidates:
        if _close(result, candidate, 1e-4):
            return hint
    if bool((result < -1e-6).any()):
        return ("KL is negative for some inputs: a KL divergence is never negative; "
                "check the sign of each term.")
    return (f"expected {_listed(expected)}, got {_listed(result)}: compare each "
            "term with 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).")


def _require_count(name: str, value, minimum: int, why: str = "") -> None:
    """Refuse (misuse of a checker) a ``value`` that is no integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}{why}; "
                         f"got {value!r}")


def _gaussian_parameters(low: float, high: float):
    """Seeded ``mu`` and ``log_var`` of shape (3, 8) in float64, both requiring
    gradients; ``log_var`` uniform in [low, high]."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    log_var = torch.empty(3, 8, dtype=torch.float64).uniform_(low, high,
                                                             generator=generator)
    return mu.requires_grad_(True), log_var.requires_grad_(True)


def kl_standard_normal(fn: Callable, takes: str = "mu_log_var") -> bool:
    r"""Check a learner's :math:`\mathrm{KL}(q(z|x) \,\|\, \mathcal{N}(0, I))`.

    With ``takes="mu_log_var"`` (the default) ``fn(mu, log_var)`` receives the means
    and the log-variances :math:`\log\sigma^2`, both of shape (batch, latent_dim),
    and must return one KL per example, shape (batch,), summed over the latent units.
    With ``takes="posterior"`` it receives ``q = Independent(Normal(mu, sigma), 1)``
    instead. Prints what passed and what failed; returns True when all passed.
    """
    _require_callable(fn)
    if takes not in ("mu_log_var", "posterior"):
        raise ValueError(f"takes must be 'mu_log_var' or 'posterior'; got {takes!r}")
    signature = "fn(mu, log_var)" if takes == "mu_log_var" else "fn(posterior)"
    report = _Report(f"Checking the KL to N(0, I), called as {signature}:")

    def run(mu, log_var):
        if takes == "mu_log_var":
            return _call(report, fn, mu, log_var)
        posterior = Independent(Normal(mu, (0.5 * log_var).exp()), 1)
        return _call(report, fn, posterior)

    mu, log_var = _gaussian_parameters(-2.0, 1.0)  # (3, 8) each
    batch, latent_dim = mu.shape
    result = run(mu, log_var)
    if not _is_tensor(report, result, "the KL of each example"):
        return report.finish()
    if result.shape != (batch,):
        shape = tuple(result.shape)
        hint = (f"for {batch} examples with {latent_dim} latent units it returned shape "
                f"{shape}; sum over the latent units only (.sum(dim=-1)), so that "
                "each example gets its own KL, and average over the batch later, "
                "in the loss.")
        if shape == ():
            hint += " One number for the whole batch is too early a reduction."
        report.fail(f"returns one KL per example, shape ({batch},)", hint)
        return report.finish()
    report.ok(f"returns one KL per example, shape ({batch},)")
    if not bool(torch.isfinite(result).all()):
        report.fail("is finite", LOG_VAR_IS_ANY_REAL)
        return report.finish()
    if result.requires_grad:
        report.ok("carries gradients back to mu and log_var")
    else:
        report.fail("carries gradients back to mu and log_var",
                    "the result has no grad_fn: compute it with torch operations only "
                    "(no .item(), .detach(), NumPy or torch.no_grad()).")
    zero = run(torch.zeros(2, latent_dim, dtype=torch.float64),
               torch.zeros(2, latent_dim, dtype=torch.float64))
    if _is_tensor(report, zero, "the KL at the prior"):
        if _close(zero, torch.zeros(2, dtype=torch.float64)):
            report.ok("is 0 when q(z|x) is the prior itself (mu = 0, log_var = 0)")
        else:
            report.fail("is 0 when q(z|x) is the prior itself (mu = 0, log_var = 0)",
                        f"it returned {_listed(zero)}. "
                        + _kl_hint(zero, torch.zeros(2, latent_dim).double(),
                                   torch.zeros(2, latent_dim).double()))
    expected = _kl_closed_form(mu, log_var)
    what = "equals 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2) on random inputs"
    if _close(result, expected):
        report.ok(what)
    else:
        report.fail(what, _kl_hint(result.detach(), mu.detach(), log_var.detach()))
    return report.finish()


# ------------------------------------------------------------ reparameterization


def reparameterize(fn: Callable) -> bool:
    r"""Check a learner's ``fn(mu, log_var) -> z``, a draw from :math:`N(\mu, \sigma^2)`.

    ``mu`` and ``log_var`` (:math:`\log\sigma^2`) have the same shape, and so must
    ``z``. A correct answer is ``mu + (0.5 * log_var).exp() * torch.randn_like(mu)``
    or ``Normal(mu, (0.5 * log_var).exp()).rsample()``: its draws have the right mean
    and spread, and gradients reach both ``mu`` and ``log_var``. Prints what passed
    and what failed; returns True when all passed.
    """
    _require_callable(fn)
    report = _Report("Checking the reparameterized draw, called as fn(mu, log_var):")
    with _seeded():
        return _check_reparameterize(fn, report)


def _check_reparameterize(fn, report: _Report) -> bool:
    base_mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    base_log_var = torch.tensor([-1.0, 0.5, 1.2], dtype=torch.float64)
    mu = base_mu.repeat(4, 1).requires_grad_(True)  # (4, 3)
    log_var = base_log_var.repeat(4, 1).requires_grad_(True)
    z = _call(report, fn, mu, log_var)
    if not _is_tensor(report, z, "the draws z"):
        return report.finish()
    if z.shape != mu.shape:
        report.fail("returns z of the same shape as mu, (4, 3)",
                    f"it returned shape {tuple(z.shape)}: draw one noise value per "
                    "entry, eps = torch.randn_like(mu).")
        return report.finish()
    report.ok("returns z of the same shape as mu, (4, 3)")
    if _close(z, mu, 1e-12):
        report.fail("adds random noise", "z equals mu: no noise was added; "
                    "z = mu + sigma * eps with eps = torch.randn_like(mu).")
        return report.finish()
    if not z.requires_grad:
        report.fail("lets the gradient reach the mean and the scale",
                    "gradient does not reach the mean or the scale: " + USE_RSAMPLE)
        return report.finish()
    grad_mu, grad_log_var = torch.autograd.grad(
        z, [mu, log_var], torch.ones_like(z), allow_unused=True)
    missing = [name for name, grad in (("mean", grad_mu), ("scale", grad_log_var))
               if grad is None or not bool(grad.abs().sum() > 0)]
    if missing:
        report.fail("lets the gradient reach the mean and the scale",
                    f"gradient does not reach the {' or the '.join(missing)}: "
                    + USE_RSAMPLE)
        return report.finish()
    report.ok("lets the gradient reach the mean and the scale")
    z = z.detach()
    if _close(grad_mu, torch.ones_like(z)) and _close(grad_log_var, 0.5 * (z - base_mu)):
        report.ok("has the reparameterization gradients dz/dmu = 1, "
                  "dz/dlog_var = (z - mu) / 2")
    else:
        report.fail("has the reparameterization gradients dz/dmu = 1, "
                    "dz/dlog_var = (z - mu) / 2",
                    "z should be mu + exp(log_var / 2) * eps with eps ~ N(0, 1) drawn "
                    "independently of mu and log_var.")
    _check_draws(fn, report, base_mu, base_log_var)
    return report.finish()


def _check_draws(fn, report: _Report, base_mu, base_log_var) -> None:
    """The draws' noise, independence, mean and spread, from many rows at once."""
    num_draws = 20_000
    mu, log_var = base_mu.repeat(num_draws, 1), base_log_var.repeat(num_draws, 1)
    with torch.no_grad():
        z = _call(report, fn, mu, log_var, what="runs on a batch of 20000 rows")
    if not _is_tensor(report, z, "the draws z") or z.shape != mu.shape:
        return
    z = z.double()
    if bool((z == z[:1]).all()):
        report.fail("draws fresh noise for every row",
                    "every row got the same eps: draw it with torch.randn_like(mu), "
                    "not torch.randn(latent_dim).")
        return
    report.ok("draws fresh noise for every row")
    mean, spread = z.mean(0), z.std(0)
    sigma = (0.5 * base_log_var).exp()
    mean_ok = bool(((mean - base_mu).abs() < 5 * sigma / math.sqrt(num_draws)).all())
    relative = 5 / math.sqrt(2 * num_draws)

    def spread_is(scale):
        return bool(((spread / scale.abs() - 1).abs() < relative).all())

    if mean_ok and spread_is(sigma):
        report.ok("has mean mu and standard deviation exp(log_var / 2) "
                  f"({num_draws} draws)")
        return
    hint = (f"mean {_listed(mean, 3)} (want {_listed(base_mu, 3)}), standard deviation "
            f"{_listed(spread, 3)} (want {_listed(sigma, 3)}).")
    if spread_is(base_log_var.exp()):
        hint += " exp(log_var) is the variance; the scale is exp(0.5 * log_var)."
    elif spread_is(base_log_var):
        hint += " log_var was used as sigma; the scale is exp(0.5 * log_var)."
    elif spread_is(torch.ones_like(sigma)):
        hint += " eps was not multiplied by the scale exp(0.5 * log_var)."
    report.fail("has mean mu and standard deviation exp(log_var / 2)", hint)


# -------------------------------------------------------------------- log_prob


def log_prob(fn: Callable, family: str = "bernoulli", takes: str | None = None) -> bool:
    """Check a learner's log-probability (or log-density) function.

    ``family="bernoulli"``: ``fn(value, logits)`` scores binary pixels under
    ``Bernoulli(logits=logits)``. ``family="normal"``: ``fn(value, loc, scale)``
    scores under ``Normal(loc, scale)``, with ``scale`` the standard deviation; with
    ``takes="log_var"`` it is called as ``fn(value, loc, log_var)`` with
    ``log_var`` = log sigma^2, what a Gaussian decoder with a learned variance
    outputs for each pixel. Either family may return one number per entry (the
    shape of ``value``) or per row (summed over the last dimension). A Bernoulli
    log-probability must refuse values outside {0, 1} (raise an error or return
    -inf), as ``torch.distributions`` does. Returns True when all passed.
    """
    _require_callable(fn)
    allowed = {"bernoulli": ("logits",), "normal": ("scale", "log_var")}
    if family not in allowed:
        raise ValueError(f"family must be 'bernoulli' or 'normal'; got {family!r}")
    takes = takes or allowed[family][0]
    if takes not in allowed[family]:
        raise ValueError(f"takes must be one of {allowed[family]} for family "
                         f"{family!r}; got {takes!r}")
    if family == "bernoulli":
        return _check_bernoulli(fn)
    return _check_normal(fn, takes)


def _reduced_like(report, result, value, reference, what) -> torch.Tensor | None:
    """``reference`` reduced as the learner reduced: per entry or summed per row."""
    if not _is_tensor(report, result, what):
        return None
    if result.shape == value.shape:
        return reference
    if result.shape == value.shape[:-1]:
        return reference.sum(-1)
    report.fail(f"returns {what}",
                f"for values of shape {tuple(value.shape)} it returned shape "
                f"{tuple(result.shape)}; return one number per entry, or per row "
                "(summed over the last dimension).")
    return None


def _check_bernoulli(fn) -> bool:
    report = _Report("Checking the Bernoulli log-probability, called as "
                     "fn(value, logits):")
    logits = torch.tensor([[5.0, 3.0, 1.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    pixels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    result = _call(report, fn, pixels, logits)
    exact = Bernoulli(logits=logits).log_prob(pixels)  # (2, 3)
    expected = _reduced_like(report, result, pixels, exact, "log-probabilities")
    if expected is None:
        return report.finish()
    report.ok(f"returns shape {tuple(result.shape)} for values of shape (2, 3)")
    if bool((result > 1e-9).any()):
        report.fail("is <= 0 for pixels 0 and 1",
                    "log-probabilities of a discrete distribution must be <= 0, since "
                    f"probabilities are <= 1; it returned {_listed(result)}.")
    else:
        report.ok("is <= 0 for pixels 0 and 1")
    if _close(result, expected):
        report.ok("equals torch.distributions.Bernoulli(logits=...).log_prob")
    else:
        slips = [(-exact, "That is minus the log-probability (a BCE loss), not log p."),
                 (Bernoulli(logits=logits).log_prob(1 - pixels),
                  "That scores 1 - x: log p(x = 1) = log sigmoid(logit).")]
        hint = (_hint_from_slips(result, expected, slips)
                + " By hand: x * logits - softplus(logits).")
        report.fail("equals torch.distributions.Bernoulli(logits=...).log_prob", hint)
    for bad, name in ((2.0, "log_prob(2)"), (0.5, "log_prob(0.5), a grey pixel")):
        _check_support(report, fn, torch.full_like(pixels, bad), logits, name)
    return report.finish()


def _check_support(report, fn, value, logits, name) -> None:
    what = f"refuses {name}: a Bernoulli has only the values 0 and 1"
    try:
        result = fn(value, logits)
    except (ValueError, RuntimeError):
        report.ok(what)
        return
    except Exception as error:
        report.fail(what, f"it raised {type(error).__name__}: {error}; raise a "
                    "ValueError instead, as torch.distributions does.")
        return
    if isinstance(result, torch.Tensor) and bool((result == -math.inf).all()):
        report.ok(what)
        return
    hint = ("Score only 0 and 1: check the values first and raise ValueError, as "
            "torch.distributions.Bernoulli does (its validate_args); binarize grey "
            "images before scoring them.")
    if isinstance(result, torch.Tensor) and bool((result > 0).any()):
        hint = ("log-probabilities of a discrete distribution must be <= 0: "
                f"{name.split(',')[0]} returned positive values "
                f"{_listed(result)}. " + hint)
    else:
        shown = _listed(result) if isinstance(result, torch.Tensor) else repr(result)
        hint = f"It returned {shown}: numbers that are no log-probabilities. " + hint
    report.fail(what, hint)


def _normal_slips(value, loc, sigma, takes):
    """Common slips in a Normal log-density: (what each computes, its hint)."""
    square = (value - loc) ** 2

    def log_normal(scale):  # the right formula, with the given scale in it
        return -0.5 * LOG_2PI - scale.log() - square / (2 * scale**2)

    right = log_normal(sigma)
    if takes == "scale":
        as_sd = ("The variance sigma^2 was used where the standard deviation belongs: "
                 "Normal(loc, scale) takes sigma, not sigma^2.")
        as_variance = ("the scale was treated as a variance: Normal(loc, scale) takes "
                       "the standard deviation.")
    else:
        as_sd = ("exp(log_var) is the variance sigma^2, used here as the standard "
                 "deviation (log sigma^2 treated as log sigma): the scale is "
                 "sigma = exp(0.5 * log_var).")
        as_variance = ("exp(0.5 * log_var) is the standard deviation, used here as the "
                       "variance: sigma^2 = exp(log_var).")
    return [
        (-right, "That is minus the log-density (a negative log-likelihood)."),
        (right + 0.5 * LOG_2PI, "The constant -1/2 log(2 pi) is missing."),
        (right - sigma.log(), "log sigma^2 was used where log sigma belongs: the "
         "normaliser of N(mu, sigma^2) is sigma sqrt(2 pi)."),
        (right - square / (2 * sigma**2),
         "The factor 1/2 in front of (x - mu)^2 / sigma^2 is missing."),
        (-0.5 * LOG_2PI - sigma.log() - square / (2 * sigma),
         "(x - mu)^2 was divided by sigma, not by sigma^2."),
        (log_normal(sigma**2), as_sd),
        (log_normal(sigma.sqrt()), as_variance),
    ]


def _hint_from_slips(result, expected, slips) -> str:
    """Expected and got, and the slip whose value the result matches, if any."""
    hint = f"expected {_listed(expected)}, got {_listed(result)}."
    for candidate, slip in slips:
        if result.shape != candidate.shape:
            candidate = candidate.sum(-1)
        if _close(result, candidate):
            return hint + " " + slip
    return hint


def _check_normal(fn, takes: str) -> bool:
    report = _Report(f"Checking the Normal log-density, called as "
                     f"fn(value, loc, {takes}):")
    value = torch.tensor([[0.0, 1.0, 1.0], [0.3, -2.0, 4.0]], dtype=torch.float64)
    loc = torch.tensor([[0.0, 1.0, -2.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.1, 2.0], [0.5, 3.0, 1.5]], dtype=torch.float64)
    given = sigma if takes == "scale" else 2 * sigma.log()  # what fn receives
    loc_leaf, given_leaf = loc.clone().requires_grad_(True), given.requires_grad_(True)
    result = _call(report, fn, value, loc_leaf, given_leaf)
    exact = Normal(loc, sigma).log_prob(value)
    expected = _reduced_like(report, result, value, exact, "log-densities")
    if expected is None:
        return report.finish()
    report.ok(f"returns shape {tuple(result.shape)} for values of shape (2, 3)")
    if not bool(torch.isfinite(result).all()):
        report.fail("is finite", LOG_VAR_IS_ANY_REAL if takes == "log_var" else
                    "it returned nan or inf: the scale is positive, so check each log.")
        return report.finish()
    what = f"carries gradients back to loc and {takes}"
    if result.requires_grad:
        report.ok(what)
    else:
        report.fail(what, "the result has no grad_fn: a decoder learns loc and "
                    f"{takes} by this gradient; no .item(), .detach() or NumPy.")
    what = "equals torch.distributions.Normal(loc, sigma).log_prob"
    if _close(result, expected):
        report.ok(what)
    else:
        report.fail(what, _hint_from_slips(result, expected,
                                           _normal_slips(value, loc, sigma, takes)))
    return report.finish()


# ------------------------------------------------------------------ negative ELBO


def _default_model_and_images(num_classes: int | None = None):
    """A small seeded VAE whose posteriors are far from the prior, and 8 images.

    ``num_classes`` builds the same model as a conditional VAE.
    """
    with _seeded():
        model = build_vae(latent_dim=4, hidden_sizes=(32,), num_classes=num_classes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        last = model.encoder[-1]
        # Means far from 0 and narrow posteriors: a KL of tens of nats, which
        # keeps each slip far from the right answer.
        last.bias[:4] = 3.0 * torch.randn(4, generator=generator)
        last.bias[4:] = torch.empty(4).uniform_(-2.0, -1.0, generator=generator)
        model.decoder[0].weight.mul_(2.0)  # so that the draw of z matters
    return model, _binary_images(8, generator)


def _binary_images(num_images: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded binary images, (num_images, 784), about a third of the pixels on."""
    probabilities = torch.rand(num_images, IMAGE_SIZE, generator=generator) * 0.6
    return torch.bernoulli(probabilities, generator=generator)


def _loss_value(report, fn, model, images, what, allow_float=False):
    """The learner's loss as a tensor, or None after reporting why it is not one.

    ``allow_float``: a Python number is fine too (an evaluation, not a training loss).
    """
    result = _call(report, fn, model, images, what=what)
    if isinstance(result, tuple | list) and result:
        result = result[0]  # (loss, terms), like vc.elbo.negative_elbo
    if isinstance(result, _Crashed):
        return None
    if allow_float and isinstance(result, int | float) and not isinstance(result, bool):
        result = torch.tensor(float(result))
    if not isinstance(result, torch.Tensor):
        report.fail("returns the loss as a tensor",
                    f"it returned {type(result).__name__}; return a scalar tensor "
                    "(no .item()) so that loss.backward() works.")
        return None
    if result.dim() != 0:
        report.fail("returns one number for the batch",
                    f"it returned shape {tuple(result.shape)}; average the per-image "
                    "negative ELBO over the batch with .mean().")
        return None
    return result


def _is_scalar_tensor(report: _Report, value, name: str) -> bool:
    """True for a 0-dim tensor; otherwise reports why ``value`` is no batch ``name``."""
    if not isinstance(value, torch.Tensor):
        report.fail(f"returns the {name} as a tensor",
                    f"it returned {type(value).__name__} as its {name}; return a "
                    "scalar tensor (no .item()) so that loss.backward() works.")
        return False
    if value.dim() != 0:
        report.fail(f"returns one {name} for the batch",
                    f"it returned shape {tuple(value.shape)} as its {name}; average "
                    "the per-image values over the batch with .mean().")
        return False
    return True


def _references(model, images, labels=None):
    """A precise estimate of each ELBO term per image, the -ELBO at z = mu, and
    q(z|x) (given ``labels`` for a conditional VAE)."""
    given = () if labels is None else (labels,)
    with torch.no_grad():
        terms = elbo_terms(model, images, num_samples=2000, labels=labels)
        posterior = model.encode(images, *given)
        at_mean = -(model.decode(posterior.mean, *given).log_prob(images)
                    - kl_of_posterior(posterior)).mean()  # the loss at z = mu
    return terms, float(at_mean), posterior


def _same_on_every_call(mean: float, at_mean: float, expected: float) -> str:
    """The hint for a loss that never changes: most likely it is computed at z = mu."""
    if abs(mean - at_mean) < 1e-3 * abs(mean) + 1e-3:
        return (f"It is computed at z = mu: {mean:.2f} nats, {expected - mean:.2f} "
                f"lower than the -ELBO ({expected:.2f}). A test loss computed at "
                "z = mu is not an ELBO estimate (it skips the expectation over "
                "q(z|x)); draw z with rsample in evaluation mode too.")
    return ("The loss is the same on every call: it does not draw z from q(z|x). "
            "If it uses z = mu here: a test loss computed at z = mu is not an ELBO "
            "estimate; draw z with rsample in every mode.")


def _loss_hint(mean, tolerance, terms, posterior, batch, at_mean) -> str:
    reconstruction, kl = terms["reconstruction"], terms["kl"]
    mu, sigma = posterior.mean, posterior.stddev
    latent_dim = mu.shape[-1]
    candidates = [
        (at_mean, "It is close to the loss at z = mu: decode draws of z from q(z|x), "
                  "not the posterior mean."),
        (at_mean, "It is close to the loss at z = mu: decode draws of z from q(z|x), "
                  "not the posterior mean."),
        (-(reconstruction / IMAGE_SIZE - kl).mean(),
         "Mean over pixels instead of sum: the reconstruction term is 784x too small "
         "next to the KL. Sum log p(x|z) over the 784 pixels (Independent, or "
         "reduction='sum')."),
        (-(reconstruction - IMAGE_SIZE * kl).mean(),
         "The KL is 784x too large next to the reconstruction, the balance a mean "
         "over pixels gives (a beta-VAE with beta = 784): sum log p(x|z) over the "
         "pixels and add the KL once per image."),
        (-(reconstruction - _kl_closed_form(mu, sigma)).mean(),
         "You passed sigma where log sigma^2 is expected: the KL was computed with "
         "log_var = sigma. The posterior's stddev is sigma; log_var = 2 * log(sigma)."),
        (-(reconstruction - _kl_closed_form(mu, sigma.log())).mean(),
         "You passed log sigma where log sigma^2 is expected: "
         "log_var = 2 * log(sigma), not log(sigma)."),
        (-(reconstruction / IMAGE_SIZE - kl / latent_dim).mean(),
         "Mean over pixels and over latent units instead of sums: both terms are "
         f"too small (784x and {latent_dim}x). Sum within an image, average over "
         "the batch."),
        (-(reconstruction - kl / latent_dim).mean(),
         f"The KL is {latent_dim}x too small: sum it over the latent units, "
         "do not average."),
        (-(reconstruction + kl).mean(),
         "Flipped KL sign: the KL enters the loss as if it were negative. The loss is "
         "-(reconstruction - KL) = -reconstruction + KL."),
        ((reconstruction - kl).mean(),
         "That is the ELBO itself: the loss to minimise is its negative."),
        (-reconstruction.mean(), "The KL term is missing."),
        (-(reconstruction - kl).sum(),
         f"The loss is {batch}x too large: it sums over the batch; average instead, "
         "so that it does not depend on the batch size."),
    ]
    distance, hint = min((abs(mean - float(candidate)), hint)
                         for candidate, hint in candidates)
    if distance < tolerance + 1e-4 * abs(mean):
        return hint
    expected = float(-(reconstruction - kl).mean())
    return f"expected about {expected:.2f} nats per image, got {mean:.2f}."


def negative_elbo(fn: Callable, model=None, images: torch.Tensor | None = None,
                  num_calls: int = 200) -> bool:
    r"""Check a learner's training loss ``fn(model, x)``: the batch mean of -ELBO.

    ``fn`` receives a VAE of :mod:`vae_course.models` (use ``model.encode(x)`` for
    q(z|x), ``model.decode(z)`` for p(x|z)) and binary images ``x`` (batch, 784), and
    returns a scalar tensor (or a tuple whose first item is one), estimated with a
    reparameterized draw of z. By default a small seeded model and 8 images are used;
    pass your own ``model`` and binary ``images`` to check on those. The loss is
    random, so it is called ``num_calls`` times, in training and in evaluation mode,
    and its average is compared with a precise estimate of the negative ELBO.
    Returns True when all passed.
    """
    _require_callable(fn)
    return _on_model(model, images, "Checking the negative ELBO, called as fn(model, x) "
                     "on {} images:",
                     lambda *args: _check_negative_elbo(fn, *args, num_calls))


def _on_model(model, images, title: str, check: Callable) -> bool:
    """``check(model, images, report)`` on the given or the default model and images.

    Seeded, and leaving the global random state and the model's mode as they were.
    """
    if (model is None) != (images is None):
        raise ValueError("pass both model and images, or neither")
    if model is None:
        model, images = _default_model_and_images()
    images = images.to(model.device)
    report = _Report(title.format(len(images)))
    was_training = model.training
    try:
        with _seeded():
            return check(model, images, report)
    finally:
        model.train(was_training)


@contextmanager
def _decoder_inputs(model):
    """The tensors the model's decoder network receives while the block runs."""
    inputs = []
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):  # another kind of model: no record
        yield inputs
        return
    handle = decoder.register_forward_pre_hook(
        lambda module, args: inputs.extend(a for a in args if torch.is_tensor(a)))
    try:
        yield inputs
    finally:
        handle.remove()


def _check_negative_elbo(fn, model, images, report, num_calls, labels=None,
                         first_loss=None) -> bool:
    """The loss's gradient and its average against the -ELBO (given ``labels``).

    ``first_loss`` is the result of a call already made, if any.
    """
    model.train()
    loss, codes = first_loss, []
    if loss is None:
        with _decoder_inputs(model) as codes:
            loss = _loss_value(report, fn, model, images, "your function runs")
    if loss is None:
        return report.finish()
    report.ok("returns one number for the batch")
    if not loss.requires_grad:
        report.fail("carries gradients to the model",
                    "the loss has no grad_fn: no .item(), .detach() or torch.no_grad().")
        return report.finish()
    if codes and not any(z.requires_grad for z in codes):
        report.fail("carries gradients to the model",
                    "the gradient does not reach the encoder: the decoder's z is a "
                    "constant to autograd, so the reconstruction term cannot train "
                    "the encoder; " + USE_RSAMPLE)
    else:
        report.ok("carries gradients to the model")
    references = _references(model, images, labels)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        what = f"its average over {num_calls} calls in {mode} mode is the -ELBO"
        if not _compare_with_elbo(report, fn, model, images, num_calls, what,
                                  references):
            break
    return report.finish()


def _compare_with_elbo(report, fn, model, images, num_calls, what, references,
                       allow_float=False) -> bool:
    """Average ``num_calls`` calls of a loss and compare it with the precise -ELBO.

    Returns False when a call crashed or returned no number, True otherwise.
    """
    terms, at_mean, posterior = references
    mode = "train" if model.training else "eval"
    with torch.no_grad():
        values = [_loss_value(report, fn, model, images, f"runs in {mode} mode",
                              allow_float) for _ in range(num_calls)]
    if any(value is None for value in values):
        return False
    values = torch.stack(values).double()
    mean, spread = float(values.mean()), float(values.std())
    expected = float(-terms["elbo"].mean())
    if spread == 0.0:
        report.fail(what, _same_on_every_call(mean, at_mean, expected))
        return True
    # The reference averages 2000 draws per image, as many as 2000 calls.
    reference_se = spread / math.sqrt(2000)
    tolerance = 5 * math.sqrt(spread**2 / num_calls + reference_se**2)
    if abs(mean - expected) < tolerance + 1e-4 * abs(expected):
        report.ok(f"{what} ({expected:.1f} nats per image)")
    else:
        report.fail(what, _loss_hint(mean, tolerance, terms, posterior, len(images),
                                     at_mean))
    return True



# ---------------------------------------------------------------- ELBO estimate


def elbo_estimate(fn: Callable, model=None, images: torch.Tensor | None = None,
                  num_calls: int = 200) -> bool:
    r"""Check a learner's evaluation ``fn(model, x)``: the test -ELBO, nats per image.

    The model is put in evaluation mode, as an evaluation would, and ``fn`` returns
    the batch mean of the negative ELBO as a number or a scalar tensor (no gradient
    needed). An estimate of the ELBO draws z from q(z|x); one computed at the
    posterior mean z = mu is the same on every call and lower than the -ELBO, so it
    flatters the model. The default model and images are those of
    :func:`negative_elbo`. Returns True when all passed.
    """
    _require_callable(fn)
    return _on_model(model, images, "Checking the ELBO estimate of an evaluation, "
                     "called as fn(model, x) in eval mode on {} images:",
                     lambda *args: _check_elbo_estimate(fn, *args, num_calls))


def _check_elbo_estimate(fn, model, images, report, num_calls) -> bool:
    model.eval()
    if _loss_value(report, fn, model, images, "your function runs",
                   allow_float=True) is None:
        return report.finish()
    report.ok("returns one number for the batch")
    what = f"its average over {num_calls} calls is the -ELBO"
    _compare_with_elbo(report, fn, model, images, num_calls, what,
                       _references(model, images), allow_float=True)
    return report.finish()


# ---------------------------------------------------- encoder head and q(z|x)


def encoder_head(head: Callable, in_features: int, latent_dim: int) -> bool:
    r"""Check a learner's last encoder layer: ``head(h) -> (mu, log_var)``.

    ``head`` (an ``nn.Module`` or a function) maps hidden features ``h`` of shape
    (batch, in_features) to the means and the log-variances :math:`\log\sigma^2` of
    q(z|x), each (batch, latent_dim): two linear maps (or one of 2 * latent_dim
    outputs, split in two) with no activation after them. Returns True when all
    passed.
    """
    _require_callable(head)
    report = _Report(f"Checking the encoder head, called as head(h) on h of shape "
                     f"(5, {in_features}):")
    with _seeded():
        hidden = torch.randn(5, in_features).relu()  # like the output of a ReLU layer
    parameters = list(head.parameters()) if hasattr(head, "parameters") else []
    device = parameters[0].device if parameters else torch.device("cpu")
    result = _call(report, head, hidden.to(device))
    if isinstance(result, _Crashed):
        return report.finish()
    if isinstance(result, torch.Tensor) and result.shape == (5, 2 * latent_dim):
        report.fail("returns a pair (mu, log_var)",
                    f"it returned one tensor of shape (5, {2 * latent_dim}); split it "
                    "into its two halves: mu, log_var = output.chunk(2, dim=-1).")
        return report.finish()
    if not (isinstance(result, tuple | list) and len(result) == 2
            and all(isinstance(part, torch.Tensor) for part in result)):
        report.fail("returns a pair (mu, log_var)",
                    f"it returned {type(result).__name__}; return two tensors, "
                    "return mu, log_var.")
        return report.finish()
    report.ok("returns a pair (mu, log_var)")
    mu, log_var = result
    shapes = [tuple(part.shape) for part in result]
    if shapes != [(5, latent_dim)] * 2:
        report.fail(f"gives mu and log_var of shape (5, {latent_dim}) each",
                    f"they have shapes {shapes[0]} and {shapes[1]}: one mean and one "
                    f"log-variance per latent unit, for each of the 5 rows.")
        return report.finish()
    report.ok(f"gives mu and log_var of shape (5, {latent_dim}) each")
    _check_head_outputs(report, mu, log_var, parameters)
    return report.finish()


def _check_head_outputs(report: _Report, mu, log_var, parameters) -> None:
    if _close(mu, log_var, 1e-12):
        report.fail("gives mu and log_var their own outputs",
                    "mu and log_var are the same numbers: give each its own layer "
                    "(fc21 and fc22), or split one layer's 2 * latent_dim outputs.")
        return
    report.ok("gives mu and log_var their own outputs")
    what = "leaves both unconstrained: each takes negative and positive values"
    never_negative = [name for name, part in (("mu", mu), ("log_var", log_var))
                      if bool((part >= 0).all())]
    if never_negative:
        report.fail(what, f"{' and '.join(never_negative)} is never negative: no ReLU, "
                    "softplus or exp after the last layer. A log-variance is any real "
                    "number; the posterior turns it into a positive scale.")
    else:
        report.ok(what)
    if not parameters:
        return
    (mu.sum() + log_var.sum()).backward()
    missing = [name for name, parameter in enumerate(parameters)
               if parameter.grad is None or not bool(parameter.grad.abs().sum() > 0)]
    what = "passes gradients to every weight of the head"
    if missing:
        report.fail(what, f"{len(missing)} of {len(parameters)} parameter tensors get "
                    "no gradient: no .detach(), .item() or torch.no_grad() inside, and "
                    "use every layer you define.")
    else:
        report.ok(what)
    for parameter in parameters:
        parameter.grad = None


def posterior(fn: Callable) -> bool:
    r"""Check a learner's ``fn(mu, log_var) -> q(z|x)``, a diagonal Gaussian.

    ``mu`` and ``log_var`` (:math:`\log\sigma^2`) have shape (batch, latent_dim);
    the result must be a ``torch.distributions`` object with batch shape (batch,)
    and event shape (latent_dim,), mean ``mu`` and standard deviation
    ``exp(0.5 * log_var)``, such as
    ``Independent(Normal(mu, (0.5 * log_var).exp()), 1)``, whose ``rsample`` lets
    gradients reach both inputs. Returns True when all passed.
    """
    _require_callable(fn)
    report = _Report("Checking q(z|x), called as fn(mu, log_var):")
    mu, log_var = _gaussian_parameters(-4.0, 3.0)  # (3, 8) each
    batch, latent_dim = mu.shape
    try:
        q = fn(mu, log_var)
    except ValueError as error:
        hint = f"it raised ValueError: {str(error).splitlines()[0][:120]}"
        if "scale" in str(error):
            hint += ("\nThe scale must be positive, and log_var can be negative: "
                     "the scale is sigma = exp(0.5 * log_var).")
        report.fail("your function runs", hint)
        return report.finish()
    except Exception as error:  # a learner's bug, reported rather than raised
        report.fail("your function runs", f"it raised {type(error).__name__}: {error}")
        return report.finish()
    if not isinstance(q, torch.distributions.Distribution):
        report.fail("returns a torch.distributions object",
                    f"it returned {type(q).__name__}; return the distribution itself, "
                    "e.g. Independent(Normal(loc, scale), 1).")
        return report.finish()
    report.ok("returns a torch.distributions object")
    if not _posterior_shapes(report, q, batch, latent_dim) and tuple(
            q.mean.shape) != tuple(mu.shape):
        return report.finish()  # moments of another shape cannot be compared
    _posterior_moments(report, q, mu.detach(), log_var.detach())
    _posterior_gradients(report, q, mu, log_var)
    return report.finish()


def _posterior_shapes(report: _Report, q, batch: int, latent_dim: int) -> bool:
    shapes = tuple(q.batch_shape), tuple(q.event_shape)
    what = f"has batch shape ({batch},) and event shape ({latent_dim},)"
    if shapes == ((batch,), (latent_dim,)):
        report.ok(what)
        return True
    hint = f"it has batch shape {shapes[0]} and event shape {shapes[1]}."
    if shapes == ((batch, latent_dim), ()):
        hint += (" Each latent unit is a distribution of its own: wrap the Normal in "
                 "Independent(..., 1), so that log_prob sums over the latent units "
                 "and gives one number per image.")
    report.fail(what, hint)
    return False


def _posterior_moments(report: _Report, q, mu, log_var) -> None:
    if _close(q.mean, mu):
        report.ok("has mean mu")
    else:
        hint = "mean and log-variance are swapped." if _close(q.mean, log_var) else (
            f"expected {_listed(mu[0, :4])}..., got {_listed(q.mean[0, :4])}...")
        report.fail("has mean mu", hint)
    sigma = (0.5 * log_var).exp()
    what = "has standard deviation sigma = exp(0.5 * log_var), positive"
    scale = q.stddev.detach()
    if _close(scale, sigma):
        report.ok(what)
        return
    softplus = torch.nn.functional.softplus(log_var)
    slips = [
        (log_var.exp(), "That is exp(log_var) = sigma^2, the variance: Normal takes "
                        "the standard deviation, exp(0.5 * log_var)."),
        (softplus, "That is softplus(log_var). Softplus suits a network that predicts "
                   "the scale itself; log_var is log sigma^2, so sigma = "
                   "exp(0.5 * log_var)."),
        (softplus.sqrt(), "That is sqrt(softplus(log_var)): log_var is a log, undo it "
                          "with exp, not softplus; sigma = exp(0.5 * log_var)."),
        ((2 * log_var).exp(), "That treats log_var as log sigma and squares it: "
                              "sigma = exp(0.5 * log_var)."),
        (log_var.abs(), "That is |log_var|: sigma = exp(0.5 * log_var)."),
    ]
    hint = (f"expected {_listed(sigma[0, :4])}..., got {_listed(scale[0, :4])}...; "
            "sigma = exp(0.5 * log_var).")
    for candidate, slip in slips:
        if _close(scale, candidate):
            hint = slip
            break
    report.fail(what, hint)


def _posterior_gradients(report: _Report, q, mu, log_var) -> None:
    what = "lets gradients of rsample() reach mu and log_var"
    try:
        z = q.rsample()
    except Exception as error:  # e.g. a distribution without rsample
        report.fail(what, f"rsample raised {type(error).__name__}: {error}")
        return
    if not z.requires_grad:
        report.fail(what, "the draw carries no gradient: build the distribution from "
                    "mu and log_var themselves (no .detach(), .item() or NumPy).")
        return
    grads = torch.autograd.grad(z.sum(), [mu, log_var], allow_unused=True)
    missing = [name for name, grad in zip(("mu", "log_var"), grads, strict=True)
               if grad is None or not bool(grad.abs().sum() > 0)]
    if missing:
        report.fail(what, f"no gradient reaches {' or '.join(missing)}: build the "
                    "distribution from both, without .detach().")
    else:
        report.ok(what)


# --------------------------------------------------------------- interpolation


def interpolation(fn: Callable, model=None) -> bool:
    r"""Check a learner's ``fn(model, x_a, x_b, steps) -> (steps, 784)``.

    ``x_a`` and ``x_b`` are two images of shape (784,). The answer encodes both to
    their posterior means, walks the straight line
    :math:`z(t) = (1 - t)\,\mu(x_a) + t\,\mu(x_b)` for ``steps`` values of t from
    0 to 1 (``torch.linspace(0, 1, steps)``) and returns the decoder's pixel means
    at those codes: the same frames on every call. By default a small seeded model
    is used; pass your own ``model`` to check on it. Returns True when all passed.
    """
    _require_callable(fn)
    if model is None:
        model, images = _default_model_and_images()
    else:
        images = _default_model_and_images()[1]
    x_a, x_b = images[0].to(model.device), images[1].to(model.device)
    steps = 7
    report = _Report(f"Checking the interpolation, called as fn(model, x_a, x_b, "
                     f"steps={steps}):")
    was_training = model.training
    try:
        with _seeded():
            model.eval()
            _check_interpolation(report, fn, model, x_a, x_b, steps)
    finally:
        model.train(was_training)
    return report.finish()


def _frames_along(model, x_a, x_b, t) -> torch.Tensor:
    """Pixel means decoded on the line between the posterior means, at each t."""
    with torch.no_grad():
        start, end = model.encode(torch.stack([x_a, x_b])).mean  # (latent_dim,) each
        return model.decode((1 - t[:, None]) * start + t[:, None] * end).mean


def _check_interpolation(report, fn, model, x_a, x_b, steps) -> None:
    with torch.no_grad():
        first = _call(report, fn, model, x_a, x_b, steps)
    if not _is_tensor(report, first, "the frames"):
        return
    first = first.detach()
    if first.shape != (steps, IMAGE_SIZE):
        hint = f"it returned shape {tuple(first.shape)}."
        if first.numel() == steps * IMAGE_SIZE:
            hint += f" Flatten the frames to (steps, {IMAGE_SIZE})."
        elif first.dim() == 2 and first.shape[1] == IMAGE_SIZE:
            hint += (" One frame per value of t, both ends included: "
                     "t = torch.linspace(0, 1, steps).")
        report.fail(f"returns one frame per step, shape ({steps}, {IMAGE_SIZE})", hint)
        return
    report.ok(f"returns one frame per step, shape ({steps}, {IMAGE_SIZE})")
    binary = bool(((first == 0) | (first == 1)).all())
    if binary:
        report.fail("returns pixel means, not Bernoulli draws",
                    "every value is 0 or 1: those are draws (.sample()) of p(x|z); "
                    "show the pixel means, model.decode(z).mean.")
    elif bool(((first < 0) | (first > 1)).any()):
        report.fail("returns pixel means, not Bernoulli draws",
                    "values outside [0, 1]: those look like logits; the pixel means "
                    "are model.decode(z).mean (the sigmoid of the logits).")
    else:
        report.ok("returns pixel means, not Bernoulli draws")
    with torch.no_grad():
        again = _call(report, fn, model, x_a, x_b, steps)
    if not _is_tensor(report, again, "the frames"):
        return
    if not _close(again.detach(), first, 1e-9):
        report.fail("gives the same frames on every call",
                    "the frames change between calls: encode each image to its "
                    "posterior mean (.mean), not a draw (rsample), and decode means.")
        return
    report.ok("gives the same frames on every call")
    t = torch.linspace(0, 1, steps, device=first.device)
    what = "decodes the straight line between the two posterior means, t from 0 to 1"
    if _close(first, _frames_along(model, x_a, x_b, t), 1e-4):
        report.ok(what)
        return
    slips = [
        (_frames_along(model, x_b, x_a, t), "It runs from x_b to x_a: at t = 0 "
                                            "the path starts at mu(x_a)."),
        (_frames_along(model, x_a, x_b, torch.arange(steps, device=t.device) / steps),
         "The last frame stops short of x_b: t = torch.linspace(0, 1, steps) "
         "includes both ends."),
        ((1 - t[:, None]) * x_a + t[:, None] * x_b,
         "That blends the pixels of the two images, not their codes: encode both, "
         "interpolate the posterior means, decode."),
    ]
    hint = "the frames differ from the decoded means along the line."
    for candidate, slip in slips:
        if _close(first, candidate, 1e-4):
            hint = slip
            break
    report.fail(what, hint)


# ------------------------------------------------- importance-sampled log p(x)


class _Watched(Independent):
    """A diagonal Gaussian that notes in ``log`` each time it is sampled."""

    def __init__(self, loc, scale, name: str, log: list):
        super().__init__(Normal(loc, scale), 1)
        self._name, self._log = name, log

    def sample(self, sample_shape=()):
        self._log.append(self._name)
        return super().sample(torch.Size(sample_shape))

    def rsample(self, sample_shape=()):
        self._log.append(self._name)
        return super().rsample(torch.Size(sample_shape))


class LinearGaussianVAE(torch.nn.Module):
    r"""A VAE-shaped model whose :math:`\log p(x)` is known in closed form.

    :math:`p(z) = \mathcal{N}(0, I_d)`, :math:`p(x \mid z) = \mathcal{N}(Wz + b, I)`
    over 784 "pixels", with orthogonal columns of :math:`W`, so the true posterior is
    a diagonal Gaussian. ``encode`` returns a good but imperfect proposal: the true
    posterior shifted by 0.3 of its standard deviation and 1.2 times as wide. It has
    the methods an estimator needs (``encode``, ``decode``, ``prior``, ``latent_dim``),
    in float64, and its images have :math:`\log p(x)` near -1100 nats: far below
    where ``exp`` underflows, even in float64.
    """

    def __init__(self, latent_dim: int = 4, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(IMAGE_SIZE, latent_dim,
                                               generator=generator, dtype=torch.float64))
        self.scales = torch.linspace(20.0, 50.0, latent_dim, dtype=torch.float64)
        self.weight = basis * self.scales  # (784, latent_dim), orthogonal columns
        self.bias = torch.randn(IMAGE_SIZE, generator=generator, dtype=torch.float64)
        self.latent_dim = latent_dim
        self.draws: list[str] = []  # which distributions were sampled, in order

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prior(self):
        zeros = torch.zeros(self.latent_dim, dtype=torch.float64)
        return _Watched(zeros, torch.ones_like(zeros), "prior", self.draws)

    def true_posterior(self, x: torch.Tensor):
        """Mean and standard deviation of p(z|x), each (batch, latent_dim)."""
        variance = 1 / (1 + self.scales**2)  # (latent_dim,)
        mean = variance * ((x - self.bias) @ self.weight)  # (batch, latent_dim)
        return mean, variance.sqrt().expand_as(mean)

    def encode(self, x: torch.Tensor):
        mean, std = self.true_posterior(x.double())
        shift = 0.3 * std * torch.tensor([(-1.0) ** j for j in range(self.latent_dim)],
                                         dtype=torch.float64)
        return _Watched(mean + shift, 1.2 * std, "posterior", self.draws)

    def decode(self, z: torch.Tensor):
        loc = z.double() @ self.weight.T + self.bias  # (..., 784)
        return Independent(Normal(loc, torch.ones_like(loc)), 1)

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, W W^T + I) for each image, by the Woodbury identity: (batch,)."""
        residual = x.double() - self.bias  # (batch, 784)
        projected = residual @ (self.weight / self.scales)  # (batch, latent_dim)
        shrink = self.scales**2 / (1 + self.scales**2)
        quadratic = (residual**2).sum(-1) - (shrink * projected**2).sum(-1)
        log_det = torch.log1p(self.scales**2).sum()
        return -0.5 * (IMAGE_SIZE * LOG_2PI + log_det + quadratic)

    def images(self, num_images: int = 3, seed: int = 1) -> torch.Tensor:
        """Images drawn from the model itself: (num_images, 784), float64."""
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(num_images, self.latent_dim, generator=generator,
                        dtype=torch.float64)
        noise = torch.randn(num_images, IMAGE_SIZE, generator=generator,
                            dtype=torch.float64)
        return z @ self.weight.T + self.bias + noise


def _estimate_hint(result, exact, num_samples, draws_per_call, excess_at) -> str:
    """The likely slip in an importance-sampled estimate, from numbers and draws."""
    excess = result - exact  # (batch,)
    log_k = math.log(num_samples)
    if all(abs(value - math.log(k)) < 0.3 for k, value in excess_at.items()):
        return (f"It is log p(x) + log K (here {excess.mean():.2f} too high, "
                f"log {num_samples} = {log_k:.2f}): the -log K of the mean is "
                "missing; use torch.logsumexp(log_w, dim=0) - math.log(K).")
    if "prior" in draws_per_call:
        return ("z was drawn from the prior p(z). Its draws almost never land where "
                "the posterior lives; draw z from q(z|x), model.encode(x).sample((K,)), "
                "and weight each draw by p(x|z) p(z) / q(z|x).")
    if draws_per_call.count("posterior") > 1:
        return ("q(z|x) was sampled more than once: log p(x|z), log p(z) and "
                "log q(z|x) must all be evaluated at the same draws. Draw "
                "z = q.sample((K,)) once and use q.log_prob(z), not a new q.sample().")
    if bool((excess > 0.3).all()):
        return (f"It lies above the exact log p(x) by {_listed(excess, 2)} nats, yet "
                "with z ~ q(z|x) it is a lower bound in expectation. Are "
                "log p(x|z), log p(z) and log q(z|x) evaluated at the same z? Draw "
                "z = q.sample((K,)) once and use q.log_prob(z).")
    return (f"expected {_listed(exact, 2)}, got {_listed(result, 2)}. Check each term "
            "of log w = log p(x|z) + log p(z) - log q(z|x), with z ~ q(z|x), and "
            "that the mean over the K samples is taken in log space.")


def log_likelihood_estimate(fn: Callable, num_samples: int = 1000) -> bool:
    r"""Check a learner's importance-sampled estimate ``fn(model, x, K) -> (batch,)``.

    ``fn`` draws K codes from ``model.encode(x)`` (q(z|x)) for each image of ``x``
    (batch, 784), weights them by :math:`p(x \mid z)\, p(z) / q(z \mid x)` with
    ``model.decode(z)`` and ``model.prior()``, and returns
    :math:`\log \frac1K \sum_k w_k` for each image. It is checked on
    :class:`LinearGaussianVAE`, whose exact :math:`\log p(x)` is known, with
    ``num_samples`` and a tenth of it. Prints what passed and what failed; returns
    True when all passed.
    """
    _require_callable(fn)
    _require_count("num_samples", num_samples, 100)
    model = LinearGaussianVAE()
    x = model.images()
    exact = model.exact_log_likelihood(x)
    report = _Report(f"Checking the log-likelihood estimate, called as fn(model, x, K) "
                     f"on {len(x)} images with exact log p(x) near {exact.mean():.0f}:")
    with _seeded():
        return _check_estimate(fn, model, x, exact, num_samples, report)


def _check_estimate(fn, model, x, exact, num_samples, report) -> bool:
    results, draws = {}, {}
    for k in (num_samples, num_samples // 10):
        model.draws.clear()
        result = _call(report, fn, model, x, k)
        draws[k] = list(model.draws)
        if not _is_tensor(report, result, "one estimate per image"):
            return report.finish()
        if result.shape != (len(x),):
            report.fail(f"returns one estimate per image, shape ({len(x)},)",
                        f"for {len(x)} images and K = {k} it returned shape "
                        f"{tuple(result.shape)}: average over the K samples only "
                        "(the samples' dimension, dim=0 for z of shape "
                        "(K, batch, latent_dim)), not over the images.")
            return report.finish()
        results[k] = result.detach().double()
    report.ok(f"returns one estimate per image, shape ({len(x)},)")
    if not all(bool(torch.isfinite(r).all()) for r in results.values()):
        bad = results[num_samples]
        report.fail("is finite although log w is near -1100 nats",
                    f"it returned {_listed(bad, 2)}. The weights were averaged in "
                    "probability space: exp(-1100) underflows to 0 even in float64 "
                    "(below about -745), and log 0 = -inf. Stay in log space: "
                    "torch.logsumexp(log_w, dim=0) - math.log(K).")
        return report.finish()
    report.ok("is finite although log w is near -1100 nats")
    excess_at = {k: float((r - exact).mean()) for k, r in results.items()}
    for k, result in results.items():
        what = f"is within 0.3 nats of the exact log p(x) with K = {k}"
        if bool(((result - exact).abs() < 0.3).all()):
            report.ok(what)
        else:
            report.fail(what, _estimate_hint(result, exact, k, draws[k], excess_at))
    return report.finish()
# ------------------------------------------------------- conditional negative ELBO

# Labels of the default check: no 9 among them, so a one-hot built without
# num_classes is too narrow.
CHECK_LABELS = (3, 1, 4, 1, 5, 0, 2, 6)


def _default_conditional_model_and_images():
    """The default model of :func:`negative_elbo`, conditional, and 8 labels."""
    model, images = _default_model_and_images(num_classes=10)
    return model, images, torch.tensor(CHECK_LABELS)


def _input_problem(inputs, base: int, first, one_hot, labels) -> str | None:
    """What is wrong with what a network received, or None when it is [first, one_hot].

    ``base`` is the width of the network's own input (784 pixels, or the latent
    units), ``first`` that input when known, ``one_hot`` the expected (batch, classes).
    """
    classes = one_hot.shape[-1]
    width = inputs.shape[-1]
    if width == base:
        return ("only its own input, no label: concatenate the one-hot of y, "
                f"torch.cat([..., F.one_hot(y, {classes}).float()], dim=-1)")
    if width == base + 1:
        return ("the label went in as one number (the class index as a float "
                "column): a one-hot gives each of the "
                f"{classes} classes a column of its own, F.one_hot(y, {classes})")
    if width != base + classes:
        hint = (f"the label part has {width - base} columns, the model expects "
                f"{classes}.")
        if width - base == int(labels.max()) + 1:
            hint += (" F.one_hot(y) without num_classes makes max(y) + 1 columns, "
                     f"here {width - base}; write F.one_hot(y, num_classes="
                     f"{classes}).")
        return hint
    rows = inputs.reshape(-1, width)[:len(labels)].detach().double()
    if torch.equal(rows[:, :classes], one_hot) and not torch.equal(
            rows[:, -classes:], one_hot):
        return ("the one-hot comes first: the first layer was built for "
                "torch.cat([input, one_hot], dim=-1), in that order")
    if not torch.equal(rows[:, -classes:], one_hot):
        return (f"its last {classes} columns are not the one-hot of y: condition "
                "on the labels you were given, one row per image")
    if first is not None and not torch.equal(rows[:, :base], first.double()):
        return "its first columns are not the images x themselves"
    return None


def _check_inputs(report, seen, model, images, labels) -> bool:
    """Report what the encoder and the decoder received on the learner's first call."""
    one_hot = torch.nn.functional.one_hot(labels, model.num_classes).double()
    networks = (("encoder", IMAGE_SIZE, images, "the pixels x", "q(z|x,y)"),
                ("decoder", model.latent_dim, None, "the code z", "p(x|z,y)"))
    for name, base, first, what, distribution in networks:
        claim = (f"the {name} gets {what} and the one-hot of y "
                 f"({base} + {model.num_classes} inputs), for {distribution}")
        if not seen[name]:
            report.fail(claim, f"your function never called model.{name} (or "
                        f"model.{name[:-1]})")
            return False
        problem = _input_problem(seen[name][0], base, first, one_hot, labels)
        if problem:
            report.fail(claim, f"The {name} got {seen[name][0].shape[-1]} inputs: "
                        + problem)
            return False
        report.ok(claim)
    return True


def conditional_negative_elbo(fn: Callable, model=None,
                              images: torch.Tensor | None = None,
                              labels: torch.Tensor | None = None,
                              num_calls: int = 200) -> bool:
    r"""Check a conditional VAE's loss ``fn(model, x, y)``: the batch mean of -ELBO.

    ``model`` is a :class:`vae_course.models.ConditionalVAE`; the function may use
    ``model.encode(x, y)`` and ``model.decode(z, y)``, or feed the raw networks
    ``model.encoder`` and ``model.decoder`` itself, each with the one-hot of the
    int64 labels ``y`` concatenated after its input. The checker watches what the two
    networks receive (a missing label, a one-hot of the wrong width, the label as one
    float number), then compares the loss, over ``num_calls`` calls, with the
    conditional negative ELBO, E_q[-log p(x|z,y)] + KL(q(z|x,y) || p(z)).
    By default a small seeded model, 8 binary images and their labels are used.
    Returns True when all passed.
    """
    _require_callable(fn)
    given = (model, images, labels)
    if any(item is None for item in given) and any(item is not None for item in given):
        raise ValueError("pass model, images and labels together, or none of them")
    if model is None:
        model, images, labels = _default_conditional_model_and_images()
    if not is_conditional(model):
        raise TypeError("this checker needs a conditional VAE "
                        "(vc.models.build_vae(num_classes=10))")
    images, labels = images.to(model.device), labels.to(model.device)
    report = _Report(f"Checking the conditional negative ELBO, called as "
                     f"fn(model, x, y) on {len(images)} labelled images:")
    seen = {"encoder": [], "decoder": []}
    hooks = [getattr(model, name).register_forward_pre_hook(
        lambda _module, inputs, name=name: seen[name].append(inputs[0].detach()))
        for name in seen]
    was_training = model.training
    try:
        with _seeded():
            model.train()
            loss = _loss_value(report, lambda m, x: fn(m, x, labels), model, images,
                               "your function runs")
            for hook in hooks:
                hook.remove()
            hooks = []
            if not _check_inputs(report, seen, model, images, labels) or loss is None:
                return report.finish()
            return _check_negative_elbo(lambda m, x: fn(m, x, labels), model, images,
                                        report, num_calls, labels, first_loss=loss)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
# ------------------------------------------------------------- a mixture prior


def _mixture_setting():
    """A mixture of 3 Gaussians in 2-D with unequal weights: logits, means, log_vars."""
    logits = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)          # (K,)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]],
                         dtype=torch.float64)                             # (K, 2)
    log_vars = torch.tensor([[0.0, -1.0], [-0.5, 0.5], [1.0, -2.0]],
                            dtype=torch.float64)                          # (K, 2)
    return logits, means, log_vars


def _mixture_prior(logits, means, log_vars) -> MixtureSameFamily:
    """sum_k pi_k N(mu_k, diag sigma_k^2) with pi = softmax(logits): the reference."""
    components = Independent(Normal(means, (0.5 * log_vars).exp()), 1)   # batch (K,)
    return MixtureSameFamily(Categorical(logits=logits), components)


def _mixture_slips(z, logits, means, log_vars):
    """Common slips in a mixture's log-density: (what each computes, its hint)."""
    def log_components(scale):                                            # (n, K)
        return Independent(Normal(means, scale), 1).log_prob(z[:, None, :])

    log_n = log_components((0.5 * log_vars).exp())
    log_weights = logits.log_softmax(-1)
    weights_hint = "log pi = log_softmax(logits) (Categorical(logits=logits) holds it)"
    return [
        (log_n.logsumexp(-1),
         "The log mixture weights are missing: log p(z) = logsumexp over k of "
         f"(log pi_k + log N(z; mu_k, sigma_k^2)), with {weights_hint}."),
        ((logits + log_n).logsumexp(-1),
         f"The weights are not normalised: add {weights_hint}, not the raw logits."),
        ((log_weights.exp() + log_n).logsumexp(-1),
         f"The weights were added as probabilities: add their logs, {weights_hint}."),
        (log_n.logsumexp(-1) - math.log(len(logits)),
         f"The weights were ignored (each component weighs 1/K): add {weights_hint}."),
        ((log_weights.exp() * log_n).sum(-1),
         "That is sum_k pi_k log N_k, an average of log-densities (a lower bound, by "
         "Jensen), not log sum_k pi_k N_k: combine the components with "
         "torch.logsumexp."),
        ((log_weights + log_components(log_vars.exp())).logsumexp(-1),
         "log_vars is log sigma^2: the components' scale is exp(0.5 * log_vars), "
         "not exp(log_vars)."),
    ]


def mixture_prior_log_prob(fn: Callable) -> bool:
    r"""Check a learner's log-density of a mixture-of-Gaussians prior.

    ``fn(z, logits, means, log_vars)`` receives points ``z`` (batch, latent_dim),
    the mixture's ``logits`` (K,), with weights :math:`\pi = \mathrm{softmax}`
    (logits), and each component's means and log-variances (K, latent_dim); it
    returns :math:`\log \sum_k \pi_k \mathcal{N}(z; \mu_k, \mathrm{diag}\,
    \sigma_k^2)` for each point, shape (batch,). It is compared with
    ``torch.distributions.MixtureSameFamily`` near the components and far from all
    of them, where every density underflows to 0. Returns True when all passed.
    """
    _require_callable(fn)
    report = _Report("Checking the mixture prior's log-density, called as "
                     "fn(z, logits, means, log_vars):")
    logits, means, log_vars = _mixture_setting()
    near = means[[0, 1, 2, 0, 1, 2]] + torch.randn(
        6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (near, logits, means, log_vars)]
    result = _call(report, fn, *leaves)
    if not _is_tensor(report, result, "log p(z) of each point"):
        return report.finish()
    if result.shape != (6,):
        hint = (f"for 6 points it returned shape {tuple(result.shape)}; return one "
                "log-density per point.")
        if tuple(result.shape) == (6, 3):
            hint += (" That is one per point and component: combine the 3 components "
                     "with torch.logsumexp over the component dimension.")
        report.fail("returns one log-density per point, shape (6,)", hint)
        return report.finish()
    report.ok("returns one log-density per point, shape (6,)")
    what = "carries gradients back to z and to the prior's parameters"
    if result.requires_grad:
        report.ok(what)
    else:
        report.fail(what, "the result has no grad_fn: the encoder learns through z, "
                    "a learned prior through its parameters; no .item() or .detach().")
    expected = _mixture_prior(logits, means, log_vars).log_prob(near)
    what = "equals MixtureSameFamily(...).log_prob near the components"
    if _close(result, expected):
        report.ok(what)
    else:
        report.fail(what, _hint_from_slips(result, expected,
                                           _mixture_slips(near, *leaves[1:])))
    _check_far_from_the_mixture(fn, report, logits, means, log_vars)
    return report.finish()


def _check_far_from_the_mixture(fn, report, logits, means, log_vars) -> None:
    far = torch.tensor([[60.0, -60.0], [-80.0, 50.0]], dtype=torch.float64)
    result = _call(report, fn, far, logits, means, log_vars,
                   what="runs on points far from every component")
    if not _is_tensor(report, result, "log p(z) far from the components"):
        return
    expected = _mixture_prior(logits, means, log_vars).log_prob(far)
    what = "is finite and right far from every component, where densities underflow"
    if _close(result, expected):
        report.ok(what)
    elif result.shape == expected.shape and not bool(torch.isfinite(result).all()):
        report.fail(what, f"it returned {_listed(result)}: there each density "
                    "exp(log N) underflows to 0, and log(0) = -inf. Summing densities "
                    "in probability space, log(sum(pi * exp(log N))), fails there; "
                    "add in log space with torch.logsumexp.")
    else:
        report.fail(what, _hint_from_slips(result, expected,
                                           _mixture_slips(far, logits, means, log_vars)))


def monte_carlo_kl(fn: Callable, rows: int = 4000) -> bool:
    r"""Check a learner's Monte Carlo estimate of :math:`\mathrm{KL}(q(z|x) \| p(z))`.

    For a prior without a closed-form KL, such as a mixture of Gaussians.
    ``fn(posterior, prior)`` receives ``q = Independent(Normal(mu, sigma), 1)``,
    batch shape (batch,), and a prior with ``log_prob`` (here a
    ``MixtureSameFamily``), and returns one estimate per example, shape (batch,),
    from reparameterized draws: ``log q(z|x) - log p(z)`` at ``z = q.rsample()``.
    Three posteriors, each repeated ``rows`` times, give the average of the
    estimates and of their gradient in mu, compared with precise references.
    Returns True when all passed.
    """
    _require_callable(fn)
    report = _Report("Checking the Monte Carlo KL, called as fn(posterior, prior):")
    with _seeded():
        return _check_monte_carlo_kl(fn, report, rows)


def _posterior(mu, log_var) -> Independent:
    return Independent(Normal(mu, (0.5 * log_var).exp()), 1)


def _mean_and_error(values: torch.Tensor):
    """Means over the last-but-one dimension of (3, n, ...) and their standard errors."""
    return values.mean(1), values.std(1) / math.sqrt(values.shape[1])


def _check_monte_carlo_kl(fn, report: _Report, rows: int) -> bool:
    prior = _mixture_prior(*_mixture_setting())
    mu = torch.tensor([[4.0, 4.0], [-2.0, 0.5], [0.5, -2.5]], dtype=torch.float64)
    log_var = torch.tensor([[-2.0, -2.5], [-1.0, -1.5], [-2.0, -1.0]],
                           dtype=torch.float64)
    leaf = mu.clone().requires_grad_(True)
    result = _call(report, fn, _posterior(leaf, log_var), prior)
    if not _is_tensor(report, result, "one estimate per example"):
        return report.finish()
    if result.shape != (3,):
        report.fail("returns one estimate per example, shape (3,)",
                    f"for 3 posteriors it returned shape {tuple(result.shape)}; score "
                    "z = posterior.rsample() under both and subtract: (batch,).")
        return report.finish()
    report.ok("returns one estimate per example, shape (3,)")
    if not result.requires_grad:
        report.fail("carries gradients back to mu", "the result has no grad_fn: "
                    + USE_RSAMPLE)
        return report.finish()
    report.ok("carries gradients back to mu")
    many = mu.repeat_interleave(rows, 0).requires_grad_(True)       # (3 * rows, 2)
    estimates = _call(report, fn, _posterior(many, log_var.repeat_interleave(rows, 0)),
                      prior, what=f"runs on {3 * rows} rows")
    if not _is_tensor(report, estimates, "the estimates") or estimates.shape != (
            3 * rows,):
        return report.finish()
    (gradient,) = torch.autograd.grad(estimates.sum(), many)
    value, value_error = _mean_and_error(estimates.detach().double().view(3, rows))
    slope, slope_error = _mean_and_error(gradient.view(3, rows, 2))
    _compare_with_the_kl(report, value, value_error, slope, slope_error, mu, log_var,
                         prior, rows)
    return report.finish()


def _compare_with_the_kl(report, value, value_error, slope, slope_error, mu, log_var,
                         prior, rows, num_draws=100_000) -> None:
    leaf = mu.clone().requires_grad_(True)
    posterior = _posterior(leaf, log_var)
    z = posterior.rsample((num_draws,))                                 # (S, 3, 2)
    # The reference gradient's error, for the same spread per draw as the learner's.
    reference_error = math.sqrt(rows / num_draws)
    log_q, log_p = posterior.log_prob(z), prior.log_prob(z)             # (S, 3)
    kl, kl_error = _mean_and_error((log_q - log_p).detach().T)
    (reference_slope,) = torch.autograd.grad((log_q - log_p).mean(0).sum(), leaf)

    def near(a, b, *errors):
        return bool(((a - b).abs() < 5 * sum(e**2 for e in errors).sqrt() + 1e-6).all())

    what = "its average over many draws is the KL"
    if near(value, kl, value_error, kl_error):
        report.ok(what)
    else:
        cross_entropy = -log_p.detach().mean(0)
        candidates = [
            (-kl, "That is minus the KL: the sign is flipped; the KL is "
                  "log q(z|x) - log p(z), never negative on average."),
            (cross_entropy, "That is the cross-entropy -log p(z) alone: subtract the "
                            "entropy, that is add log q(z|x)."),
            (-posterior.entropy().detach(),
             "That is log q(z|x) alone, minus the entropy: subtract log p(z)."),
            (_kl_closed_form(mu, log_var),
             "That is the closed-form KL to N(0, I), but the prior is the mixture "
             "passed as `prior`: score z under it, prior.log_prob(z)."),
        ]
        hint = f"expected {_listed(kl, 2)}, got {_listed(value, 2)}."
        for candidate, slip in candidates:
            if near(value, candidate, value_error, kl_error):
                hint += " " + slip
                break
        report.fail(what, hint)
    what = "its gradient with respect to mu is the KL's gradient"
    if near(slope, reference_slope, slope_error, reference_error * slope_error):
        report.ok(what)
    elif near(slope, torch.zeros_like(slope), slope_error):
        report.fail(what, "it averages to zero: the gradient does not reach the encoder "
                    "through z; " + USE_RSAMPLE)
    else:
        report.fail(what, f"expected {_listed(reference_slope, 2)}, got "
                    f"{_listed(slope, 2)}: the gradient of a wrong value is wrong too; "
                    "make the average the KL first.")
# ------------------------------------------------------------------ bits per dim

# The bits per dimension that the bin width 1/256 of each pixel adds: log2 256.
BIN_BITS = math.log2(NUM_LEVELS)
LN2 = math.log(2)


def _slope_slip(ratio: float, num_dims: int) -> str | None:
    """What turned the factor 1 / (D ln 2) into ``ratio`` times it, or None if right.

    ``ratio`` is the learner's factor on -log p divided by 1 / (D ln 2), sign removed.
    """
    slips = [
        (1.0, None),
        (LN2, "Nats are not bits: divide by ln 2 as well (1 bit = ln 2 nats); "
              "as it is, this is nats per dimension."),
        (LN2 / math.log(10), "That is log base 10 (digits, not bits): divide by ln 2, "
                             "or use math.log2 / torch.log2, not log10."),
        (LN2**2, "ln 2 is on the wrong side: bits = nats / ln 2 (= nats * log2(e)); "
                 "multiplying by ln 2, or dividing by log2(e), goes the other way."),
        (float(num_dims), f"Bits per image, not per dimension: divide by the "
                          f"{num_dims} pixels too."),
        (num_dims * LN2, f"Nats per image: divide by the {num_dims} pixels and by "
                         "ln 2."),
        (num_dims * LN2 / math.log(10),
         f"Log base 10 and per image: divide by {num_dims} and use ln 2, not ln 10."),
        (1.0 / num_dims, f"Divided by the {num_dims} pixels twice."),
    ]
    for value, hint in slips:
        if abs(ratio / value - 1) < 1e-6:
            return hint or ""
    return None


def _intercept_slip(intercept: float, ratio: float, dequantized: bool,
                    num_dims: int) -> str | None:
    """What is wrong with the constant the learner added, or None if it is right."""
    # The bin width's 8 bits, converted like the rest (right or with the same slip).
    wanted = {BIN_BITS, BIN_BITS * ratio} if dequantized else {0.0}
    if any(abs(intercept - value) < 1e-6 * max(1.0, abs(value)) for value in wanted):
        return None
    if not dequantized:
        if abs(intercept - BIN_BITS) < 1e-6:
            return ("It adds 8 bits per dimension, a bin width of 1/256: log P(x) is "
                    "already the probability of the 256-level image, so nothing is "
                    "added. The bin width belongs to densities of dequantized pixels.")
        return (f"It adds {intercept:.4g} bits per dimension to every image: a "
                "probability's code length is -log P(x) converted, nothing more.")
    slips = [
        (0.0, "The bin width is missing: a density p(y) is not a probability. P(x) "
              "is p integrated over the bin of x, 1/256 wide in each pixel, so add "
              f"{num_dims} ln 256 nats per image, which is log2 256 = 8 bits per "
              "dimension."),
        (math.log2(NUM_LEVELS - 1), "That bin width is 1/255: the 256 levels 0..255 "
                                    "split [0, 1] into 256 bins of width 1/256."),
        (-BIN_BITS, "The bin width has the wrong sign: log P = log p(y) + "
                    f"{num_dims} log(1/256), so -log P is 8 bits per dimension "
                    "larger, not smaller."),
        (math.log(NUM_LEVELS), "ln 256 is in nats: in bits the bin width adds "
                               "log2 256 = 8 per dimension."),
        (math.log10(NUM_LEVELS), "log10 256 is in digits: in bits the bin width adds "
                                 "log2 256 = 8 per dimension."),
        (BIN_BITS * num_dims, f"8 bits per pixel is {8 * num_dims} per image, but "
                              "the rest is per dimension: add 8, not 8 x "
                              f"{num_dims}."),
        (num_dims * math.log(NUM_LEVELS), f"{num_dims} ln 256 is in nats per image: "
                                          "add it before converting, or add 8 bits "
                                          "per dimension after."),
    ]
    for value, hint in slips:
        if abs(intercept - value) < 1e-6 * max(1.0, abs(value)):
            return hint
    return (f"It adds {intercept:.4g} bits per dimension; the bin width 1/256 adds "
            "log2 256 = 8.")


def _bits_hint(result, log_p, dequantized, num_dims) -> str:
    """The learner's slips, read from the line through their outputs."""
    result, log_p = result.detach().double(), log_p.double()
    design = torch.stack([torch.ones_like(log_p), -log_p], 1)  # (batch, 2)
    fitted = torch.linalg.lstsq(design, result[:, None]).solution[:, 0]
    intercept, slope = float(fitted[0]), float(fitted[1])
    expected = nats_to_bits_per_dim(-log_p, num_dims) + (BIN_BITS if dequantized else 0)
    shown = f"expected {_listed(expected)}, got {_listed(result)}."
    if not _close(design @ fitted, result, 1e-6):
        return (shown + " Your answer is not a fixed multiple of -log p plus a "
                "constant: convert with -log_p / (num_dims * ln 2) only.")
    ratio = slope * num_dims * LN2  # 1 when the conversion is right
    hints = []
    if ratio < 0:
        hints.append("The sign is flipped: the code length is -log p, which grows as "
                     "log p falls; bits per dimension of a probability are >= 0.")
    slope_hint = _slope_slip(abs(ratio), num_dims) if ratio else None
    if slope_hint is None:
        hints.append("Check the conversion: bits per dimension = -log p / "
                     f"({num_dims} ln 2).")
    elif slope_hint:
        hints.append(slope_hint)
    intercept_hint = _intercept_slip(intercept, abs(ratio), dequantized, num_dims)
    if intercept_hint:
        hints.append(intercept_hint)
    return " ".join([shown, *hints])


def bits_per_dim(fn: Callable, dequantized: bool = False,
                 num_dims: int = IMAGE_SIZE) -> bool:
    r"""Check a learner's conversion of a log-likelihood in nats to bits per dimension.

    ``fn(log_p)`` receives a (batch,) tensor of log-likelihoods in nats per image and
    returns one number per image, (batch,). With ``dequantized=False`` (the default)
    ``log_p`` is :math:`\log P(x)`, a log-probability of 256-level images, and the
    answer is :math:`-\log P(x) / (D \ln 2)`. With ``dequantized=True`` it is
    :math:`\log p(y)`, a log-density of the dequantized images
    :math:`y = (255 x + u) / 256` in :math:`[0, 1]^D`, and the answer is the bound
    :math:`(-\log p(y) + D \ln 256) / (D \ln 2)` on the bits per dimension of the
    256-level images, which includes each pixel's bin width 1/256. ``D`` is
    ``num_dims`` (784 for MNIST). Prints what passed and what failed; returns True
    when all passed.
    """
    _require_callable(fn)
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive integer; got {num_dims!r}")
    kind = "log-density of dequantized pixels" if dequantized else "log-probability"
    report = _Report(f"Checking bits per dimension from a {kind} in nats, called as "
                     f"fn(log_p) with {num_dims} dimensions:")
    uniform = 0.0 if dequantized else -num_dims * math.log(NUM_LEVELS)
    if dequantized:  # densities: above and below 1
        log_p = torch.tensor([1500.0, 320.5, 0.0, -80.25], dtype=torch.float64)
    else:  # probabilities: at most 1
        log_p = -torch.tensor([60.0, 543.4, 1234.5, 3000.0], dtype=torch.float64)
    result = _call(report, fn, log_p.clone())
    if not _is_tensor(report, result, "bits per dimension of each image"):
        return report.finish()
    if result.shape != log_p.shape:
        hint = (f"for {len(log_p)} images it returned shape {tuple(result.shape)}; "
                "convert each image's log-likelihood, and average later.")
        if result.shape == ():
            hint += " One number for the whole batch is too early a reduction."
        report.fail(f"returns one number per image, shape ({len(log_p)},)", hint)
        return report.finish()
    report.ok(f"returns one number per image, shape ({len(log_p)},)")
    if not bool(torch.isfinite(result).all()):
        report.fail("is finite", f"it returned {_listed(result)}.")
        return report.finish()
    expected = nats_to_bits_per_dim(-log_p, num_dims) + (BIN_BITS if dequantized else 0)
    at_uniform = _call(report, fn, torch.full((1,), uniform, dtype=torch.float64),
                       what="runs on one image")
    what = "gives 8 bits per dimension for the uniform distribution over 256 levels"
    if _is_tensor(report, at_uniform, "bits per dimension"):
        if at_uniform.numel() == 1 and abs(float(at_uniform.reshape(())) - 8) < 1e-6:
            report.ok(what)
        else:
            report.fail(what, f"log p = {uniform:.2f} nats per image (a uniform "
                        f"{'density on [0, 1]' if dequantized else 'probability'}) "
                        f"gave {_listed(at_uniform)}; the 256 levels of a pixel take "
                        "log2 256 = 8 bits when none is more likely than another.")
    what = ("equals (-log p + D ln 256) / (D ln 2) on other inputs" if dequantized
            else "equals -log P / (D ln 2) on other inputs")
    if _close(result, expected, 1e-6):
        report.ok(what)
    else:
        report.fail(what, _bits_hint(result, log_p, dequantized, num_dims))
    return report.finish()
# ------------------------------------------------------------- the k-sample bound


def iwae_bound(fn: Callable, num_samples: int = 10, num_calls: int = 200) -> bool:
    r"""Check a learner's k-sample bound ``fn(model, x, k) -> (batch,)``.

    ``fn`` receives a VAE of :mod:`vae_course.models`, binary images ``x`` (batch,
    784) and ``k``, draws k reparameterized codes per image from q(z|x) and returns
    :math:`\log \frac{1}{k} \sum_i p(x, z_i) / q(z_i \mid x)` for each image. It is
    called on a small seeded model: once with gradients (they must reach the encoder
    through z, and the decoder), then ``num_calls`` times, and its average is compared
    with a precise :math:`\mathcal{L}_k`, with the ELBO (log-weights averaged) and
    with the bound without its :math:`-\log k`. Returns True when all passed.
    """
    _require_callable(fn)
    _require_count("num_samples", num_samples, 2, " (at k = 1 the bound is the ELBO)")
    model, images = _default_model_and_images()
    report = _Report(f"Checking the k-sample bound, called as fn(model, x, "
                     f"{num_samples}) on {len(images)} images:")
    with _seeded():
        return _check_iwae_bound(fn, model, images, num_samples, num_calls, report)


def _check_iwae_bound(fn, model, images, k, num_calls, report) -> bool:
    with _decoder_inputs(model) as codes:
        bound = _call(report, fn, model, images, k)
    # For every decoder call, whether its codes carry a gradient (rsample).
    seen = [bool(z.requires_grad) for z in codes]
    if not _is_tensor(report, bound, "one bound per image"):
        return report.finish()
    batch = len(images)
    what = f"returns one bound per image, shape ({batch},)"
    if bound.shape != (batch,):
        report.fail(what, f"it returned shape {tuple(bound.shape)}: combine the k "
                    "log-weights of each image (logsumexp over the samples' "
                    "dimension) and keep the batch dimension.")
        return report.finish()
    report.ok(what)
    if not bool(torch.isfinite(bound).all()):
        report.fail("is finite", f"it returned {_listed(bound, 2)}. The log-weights "
                    "here are near -580 nats, so exp() of them is 0 in float32: "
                    "never exponentiate them; use torch.logsumexp(log_w, dim) - "
                    "math.log(k).")
        return report.finish()
    report.ok("is finite")
    if not _iwae_gradients(report, model, bound, seen):
        return report.finish()
    with torch.no_grad():
        values = [_call(report, fn, model, images, k, what="runs again")
                  for _ in range(num_calls)]
    if any(isinstance(value, _Crashed) for value in values):
        return report.finish()
    draws = torch.stack([value.double() for value in values]).mean(1)  # (calls,)
    _compare_with_the_bound(report, model, images, k, draws)
    return report.finish()


def _iwae_gradients(report, model, bound, seen) -> bool:
    """Whether gradients reach both networks, z through rsample included."""
    sample_hint = ("draw z with posterior.rsample((k,)) (or mu + sigma * eps), not "
                   "sample(): sample() cuts the path from z back to the encoder, "
                   "which then learns only from log q(z|x).")
    if not bound.requires_grad:
        report.fail("carries gradients to the encoder and the decoder",
                    "the bound has no grad_fn: no .item(), .detach(), NumPy or "
                    "torch.no_grad().")
        return False
    if seen and not any(seen):
        report.fail("draws z with rsample: the gradient reaches the encoder "
                    "through z", "the codes the decoder received carry no "
                    "gradient: " + sample_hint)
        return False
    networks = {"encoder": model.encoder, "decoder": model.decoder}
    gradients = torch.autograd.grad(
        bound.sum(), [p for net in networks.values() for p in net.parameters()],
        allow_unused=True)
    sizes = [len(list(net.parameters())) for net in networks.values()]
    missing = [name for (name, _), grads in zip(
        networks.items(), (gradients[:sizes[0]], gradients[sizes[0]:]), strict=True)
        if all(g is None or not bool(g.abs().sum() > 0) for g in grads)]
    if missing:
        report.fail("carries gradients to the encoder and the decoder",
                    f"no gradient reaches the {' or the '.join(missing)}.")
        return False
    report.ok("draws z with rsample: the gradient reaches the encoder through z, "
              "and the decoder")
    return True


def _compare_with_the_bound(report, model, images, k, draws) -> None:
    """The learner's average against L_k and against the usual slips."""
    num_reference, per_call = 1000, 250  # draws of the bound, and per decoder call
    batch = len(images)
    with torch.no_grad():
        repeated = images.repeat(per_call, 1)  # (per_call * batch, 784)
        log_w = torch.cat([log_importance_weights(
            model, repeated, torch.randn(per_call * batch, k, model.latent_dim))
            for _ in range(num_reference // per_call)])  # (reference * batch, k)
    log_w = log_w.double().reshape(num_reference, batch, k)
    reference = (torch.logsumexp(log_w, -1) - math.log(k)).mean(1)  # (reference,)
    expected = reference.mean().item()
    tolerance = 5 * math.sqrt(draws.var().item() / len(draws)
                              + reference.var().item() / num_reference) + 1e-3
    mean = draws.mean().item()
    what = f"its average over {len(draws)} calls is L_{k}, the k-sample bound"
    if abs(mean - expected) < tolerance:
        report.ok(what)
        return
    elbo = log_w.mean(-1).mean().item()
    candidates = [
        (elbo, "That is the ELBO: the log-weights were averaged (a mean of logs). "
               "The k-sample bound is the log of the mean weight: "
               "torch.logsumexp(log_w, dim) - math.log(k)."),
        (expected + math.log(k),
         f"It is too large by log k = {math.log(k):.2f} nats: the -log k is missing. "
         "logsumexp sums the k weights; the bound averages them."),
        (-expected, "That is minus the bound (a loss); the bound itself is "
                    "log-mean-exp of the log-weights."),
        (-elbo, "That is minus the ELBO: the log-weights were averaged, and the "
                "sign is flipped."),
    ]
    for value, hint in candidates:
        if abs(mean - value) < tolerance:
            report.fail(what, hint)
            return
    report.fail(what, f"expected about {expected:.2f} nats per image, got "
                f"{mean:.2f}: log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), "
                "then torch.logsumexp over the k samples, minus math.log(k).")
# ------------------------------------------------------- log p(x) by quadrature


def _two_latent_cases():
    """A small 2-D model, an image whose posterior is near the origin, one far out."""
    with _seeded():
        model = build_vae(latent_dim=2, hidden_sizes=(16,)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.decoder[0].weight.mul_(3.0)  # a posterior narrower than the prior
        images = torch.bernoulli(model.decode(torch.tensor([[0.3, -0.5], [3.2, -3.4]])
                                              ).mean, generator=generator)  # (2, 784)
    return model, images


def _posterior_peak(model, x, axis):
    joint = log_joint(model, x[None], codes_of(axis, axis))[0]
    best = int(joint.argmax())
    return float(axis[best // len(axis)]), float(axis[best % len(axis)]), joint


def _quadrature_hint(result, joint, step, count, log_prior, far_out, peak) -> str:
    exact = float(torch.logsumexp(joint.double(), 0)) + 2 * math.log(step)
    log_likelihood = joint.double() - log_prior
    candidates = [
        (exact - 2 * math.log(step),
         "The log of the cell area is missing: the sum approximates the integral only "
         "once each term is multiplied by the area of its cell, step**2; add "
         "2 * log(step) to the logsumexp."),
        (exact - math.log(step),
         "Only one side of the cell was counted: a cell of the 2-D grid has area "
         "step**2, so add 2 * log(step), not log(step)."),
        (exact - 2 * math.log(count),
         "That is the log of the mean of the densities over the grid, not of their "
         "sum times the cell area (the mean leaves out the area of the whole box). "
         "Use logsumexp, not a mean, and add 2 * log(step)."),
        (float(torch.logsumexp(log_likelihood, 0)) + 2 * math.log(step),
         "log p(z) is missing: the integrand is p(x|z) p(z), so add the prior's "
         "log-density at each code before the logsumexp."),
    ]
    if not math.isfinite(result):
        return ("It returned -inf or nan: the densities p(x, z) of a whole image are "
                "far below what a float32 holds (below about e^-104 it rounds to 0), "
                "so their sum underflows. Stay in log space: "
                "torch.logsumexp(log_joint, 0) + 2 * log(step).")
    for candidate, hint in candidates:
        if abs(result - candidate) < 1e-3 * max(1.0, abs(candidate)):
            return hint
    if far_out and result < exact:
        return (f"Too low for an image whose posterior sits near z = ({peak[0]:.1f}, "
                f"{peak[1]:.1f}): does your grid reach it? Build the grid from the "
                "axis you are given (every pair of its values), not from a range of "
                "your own.")
    return (f"expected {exact:.3f}, got {result:.3f}: sum p(x|z) p(z) over every "
            "pair of axis values in log space, then add 2 * log(step).")


def quadrature_log_likelihood(fn: Callable) -> bool:
    r"""Check a learner's ``fn(model, x, axis)``: log p(x) by a sum over a 2-D grid.

    ``model`` has two latent units, ``x`` is one binary image (784,) and ``axis``
    a 1-D tensor of equally spaced cell centres; the grid is every pair of axis
    values, and the answer is
    :math:`\operatorname{logsumexp}_j \log p(x, z_j) + 2 \log(\text{step})`, a
    number (or a 0-d tensor). Checked on an image whose posterior lies near the
    origin and one whose posterior lies far out. Returns True when all passed.
    """
    _require_callable(fn)
    report = _Report("Checking log p(x) by quadrature, called as fn(model, x, axis):")
    model, images = _two_latent_cases()
    cases = [("near the origin", images[0], torch.linspace(-4.0, 4.0, 161), False),
             ("far from the origin", images[1], torch.linspace(-6.0, 6.0, 241), True)]
    for where, x, axis, far_out in cases:
        what = f"equals the grid's sum for an image whose posterior is {where}"
        with torch.no_grad():
            result = _call(report, fn, model, x, axis.clone(), what=what)
        if isinstance(result, _Crashed):
            continue
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if not isinstance(result, int | float):
            report.fail(what, f"it returned {type(result).__name__}; return one "
                        "number, log p(x) of the image")
            continue
        step = float(axis[1] - axis[0])
        peak_z1, peak_z2, joint = _posterior_peak(model, x, axis)
        codes = codes_of(axis, axis)
        log_prior = (-0.5 * (codes.double()**2).sum(-1) - LOG_2PI)
        exact = float(torch.logsumexp(joint.double(), 0)) + 2 * math.log(step)
        if math.isfinite(result) and abs(result - exact) < 1e-3 * max(1.0, abs(exact)):
            report.ok(what)
        else:
            report.fail(what, _quadrature_hint(float(result), joint, step, len(axis),
                                               log_prior, far_out, (peak_z1, peak_z2)))
    return report.finish()
# ------------------------------------------------------ beta-VAE loss and warm-up


def _near(value: float, target: float) -> bool:
    return abs(value - target) <= 1e-6 * max(1.0, abs(target))


def _all_near(values: dict, targets: dict) -> bool:
    return all(_near(values[key], targets[key]) for key in values)


def _fixed_terms():
    """Per-image reconstruction terms and KLs of a batch of five, in nats."""
    reconstruction = torch.tensor([-95.0, -120.5, -80.25, -101.0, -143.0],
                                  dtype=torch.float64, requires_grad=True)
    kl = torch.tensor([12.0, 25.5, 8.25, 19.0, 30.0], dtype=torch.float64,
                      requires_grad=True)
    return reconstruction, kl


def _loss_pair(report: _Report, fn, reconstruction, kl, step, beta, warmup_steps):
    """``(loss, negative_elbo)`` as two floats and the loss tensor, or None."""
    result = _call(report, fn, reconstruction, kl, step, beta, warmup_steps)
    if isinstance(result, _Crashed):
        return None
    if not (isinstance(result, tuple | list) and len(result) == 2):
        report.fail("returns (loss, negative_elbo)",
                    f"it returned {type(result).__name__}; return two numbers: the "
                    "loss to train on and the -ELBO to report.")
        return None
    if not all(_is_scalar_tensor(report, value, name) for name, value
               in zip(("loss", "negative_elbo"), result, strict=True)):
        return None
    return float(result[0].detach()), float(result[1].detach()), result[0]


def _weights_read(tensors: dict, reconstruction, kl) -> dict | None:
    """The weights each step's loss puts on the reconstruction and on the KL.

    Read from the gradient: for -(a * reconstruction - w * KL).mean() over a batch
    of B, the derivative is -a / B for each reconstruction term and w / B for each
    KL. None when a loss has no gradient or weighs the images unequally.
    """
    batch, weights = len(reconstruction), {}
    for step, loss in tensors.items():
        if not loss.requires_grad:
            return None
        grads = torch.autograd.grad(loss, [reconstruction, kl], allow_unused=True)
        on_rec, on_kl = [torch.zeros(batch, dtype=torch.float64) if grad is None
                         else grad.detach() * batch for grad in grads]
        if not (_close(on_rec, on_rec[:1].expand(batch))
                and _close(on_kl, on_kl[:1].expand(batch))):
            return None
        weights[step] = (-float(on_rec[0]), float(on_kl[0]))
    return weights


def _schedule_hint(tensors: dict, losses: dict, reconstruction, kl, beta,
                   warmup_steps) -> str:
    """What the learner's weighting or warm-up schedule most likely got wrong."""
    wanted = {t: warmup_weight(t, beta, warmup_steps) for t in losses}
    weights = _weights_read(tensors, reconstruction, kl)
    if weights is None:
        table = ", ".join(f"{t}: {losses[t]:.4f}" for t in losses)
        return (f"its loss at each step: {table}; compare it with the batch mean of "
                "-(reconstruction - w_t * KL).")
    on_rec = {t: a for t, (a, _) in weights.items()}
    used = {t: w for t, (_, w) in weights.items()}
    batch = len(reconstruction)
    if _all_near(on_rec, {t: batch for t in losses}):
        return f"The loss is {batch}x too large: it sums over the batch; average it."
    if not _all_near(on_rec, {t: 1.0 for t in losses}):
        table = ", ".join(f"{t}: {on_rec[t]:.4g}" for t in losses)
        return ("The reconstruction term is multiplied by a weight (by step: "
                f"{table}). The weight belongs on the KL: -(reconstruction - w_t * "
                "KL); β prices the nats of the code, not the pixels.")
    if _all_near(used, {t: -w for t, w in wanted.items()}):
        return ("Flipped KL sign: the loss is -(reconstruction - w_t * KL) = "
                "-reconstruction + w_t * KL.")
    last = max(losses)
    patterns = [
        ({t: beta for t in losses},
         f"No warm-up: the weight is β = {beta:g} from step 1. It should rise "
         "linearly, w_t = β min(1, t / T), from β / T at step 1 to β at step T."),
        ({t: 1.0 for t in losses},
         "The weight is 1 at every step: neither β nor the warm-up is applied."),
        ({t: min(1.0, t / warmup_steps) for t in losses},
         "The warm-up never reaches β: the weight rises to 1, not to β. Multiply "
         "min(1, t / T) by β."),
        ({t: beta * t / warmup_steps for t in losses},
         f"The weight keeps growing after step T (at step {last} it is "
         f"{used[last]:g}, not β = {beta:g}): cap it, w_t = β min(1, t / T)."),
        ({t: beta * min(1.0, (t - 1) / warmup_steps) for t in losses},
         "The warm-up is one step late and never reaches β by step T: it is 0 at "
         "step 1 and β only at step T + 1. Steps count from 1, so w_1 = β / T and "
         "w_T = β."),
        ({t: beta * min(1, t // warmup_steps) for t in losses},
         "Integer division: t // T is 0 until step T, so the weight jumps from 0 to "
         "β instead of rising. Use t / T."),
    ]
    for weights, hint in patterns:
        if _all_near(used, weights):
            return hint
    table = ", ".join(f"{t}: {used[t]:.4g} (want {wanted[t]:.4g})" for t in losses)
    hint = f"the weight your loss used at each step: {table}."
    if all(used[t] < beta - 1e-6 for t in losses if t >= warmup_steps):
        hint = ("The warm-up never reaches β: from step T on the weight must be β. "
                + hint)
    return hint


def _check_without_warmup(report: _Report, fn, reconstruction, kl, beta) -> None:
    what = "with warmup_steps = 0 trains on -(reconstruction - β KL) from step 1"
    expected = float(-(reconstruction - beta * kl).mean().detach())
    try:
        losses = [float(fn(reconstruction, kl, step, beta, 0)[0].detach())
                  for step in (1, 50)]
    except ZeroDivisionError:
        report.fail(what, "it divided by warmup_steps = 0. No warm-up means the weight "
                    "is β from the first step: `... if warmup_steps else beta`, as "
                    "vc.train.fit does.")
        return
    except Exception as error:  # a learner's bug, reported rather than raised
        report.fail(what, f"it raised {type(error).__name__}: {error}")
        return
    if all(_near(loss, expected) for loss in losses):
        report.ok(what)
    else:
        report.fail(what, f"expected {expected:.4f} at steps 1 and 50, got "
                    f"{[round(loss, 4) for loss in losses]}.")


def _check_reported(report: _Report, reported: dict, losses: dict, reconstruction,
                    kl, beta) -> None:
    rec, kl = reconstruction.detach(), kl.detach()
    true = float(-(rec - kl).mean())
    what = "reports the true -ELBO, -(reconstruction - KL), whatever the weight"
    if all(_near(value, true) for value in reported.values()):
        report.ok(f"{what} ({true:.2f} nats per image here)")
        return
    objective = float(-(rec - beta * kl).mean())
    if _all_near(reported, losses):
        hint = ("It reports the β-weighted loss, which moves with the weight: two "
                "models trained with other β or warm-ups cannot be compared on it. "
                "Report -(reconstruction - KL), the -ELBO (β = 1), and train on the "
                "weighted loss.")
    elif all(_near(value, objective) for value in reported.values()):
        hint = ("It reports the β-objective -(reconstruction - β KL); the number to "
                "report is the -ELBO, with weight 1.")
    elif all(_near(value, -true) for value in reported.values()):
        hint = "That is the ELBO itself; report its negative, the -ELBO in nats."
    elif all(_near(value, true * len(rec)) for value in reported.values()):
        hint = f"It is {len(rec)}x too large: average over the batch, do not sum."
    else:
        got = sorted({round(value, 4) for value in reported.values()})
        hint = f"expected {true:.4f} at every step, got {got}."
    report.fail(what, hint)


def beta_vae_loss(fn: Callable, beta: float = 4.0, warmup_steps: int = 100) -> bool:
    r"""Check a learner's β-VAE loss with a linear KL warm-up.

    ``fn(reconstruction, kl, step, beta, warmup_steps)`` receives the per-image
    reconstruction terms :math:`E_q[\log p(x|z)]` and KLs, both (batch,), and the
    optimizer step ``step`` (1, 2, ...). It returns ``(loss, negative_elbo)``: the
    batch mean of :math:`-(\text{reconstruction} - w_t\,\mathrm{KL})` with
    :math:`w_t = \beta \min(1, t / T)`, ``T = warmup_steps`` (and :math:`w_t = \beta`
    when ``warmup_steps`` is 0), to train on; and the batch mean of the true
    -ELBO, :math:`-(\text{reconstruction} - \mathrm{KL})`, to report. Returns True
    when all passed.
    """
    _require_callable(fn)
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0 and beta != 1):
        raise ValueError(f"beta must be a positive number other than 1 (so that the "
                         f"checker can tell it from no weight); got {beta!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) \
            or warmup_steps < 4:
        raise ValueError(f"warmup_steps must be an integer of at least 4; "
                         f"got {warmup_steps!r}")
    report = _Report(f"Checking the β-VAE loss, called as fn(reconstruction, kl, step, "
                     f"beta={beta:g}, warmup_steps={warmup_steps}):")
    reconstruction, kl = _fixed_terms()
    steps = sorted({1, warmup_steps // 4, warmup_steps // 2, warmup_steps - 1,
                    warmup_steps, warmup_steps + 1, 3 * warmup_steps})
    losses, reported, tensors = {}, {}, {}
    for step in steps:
        pair = _loss_pair(report, fn, reconstruction, kl, step, beta, warmup_steps)
        if pair is None:
            return report.finish()
        losses[step], reported[step], tensors[step] = pair
    loss = tensors[steps[-1]]
    report.ok("returns two scalar tensors, (loss, negative_elbo)")
    if loss.requires_grad:
        report.ok("the loss carries gradients back to the terms")
    else:
        report.fail("the loss carries gradients back to the terms",
                    "the loss has no grad_fn: no .item(), .detach() or torch.no_grad().")
    wanted = {t: float(-(reconstruction - warmup_weight(t, beta, warmup_steps)
                          * kl).mean().detach()) for t in steps}
    what = f"trains on -(reconstruction - w_t KL), w_t = β min(1, t/T), at steps {steps}"
    if _all_near(losses, wanted):
        report.ok(what)
    else:
        report.fail(what, _schedule_hint(tensors, losses, reconstruction, kl, beta,
                                         warmup_steps))
    _check_without_warmup(report, fn, reconstruction, kl, beta)
    _check_reported(report, reported, losses, reconstruction, kl, beta)
    return report.finish()


# ------------------------------------------------- convolutional encoder, decoder

_CONV = (nn.Conv2d, nn.ConvTranspose2d)


def _layer_hint(layer: nn.Module, x: torch.Tensor, error: Exception) -> str:
    """Why ``layer`` refused an input of the shape of ``x``."""
    shape = tuple(x.shape)
    if isinstance(layer, _CONV) and x.dim() == 2:
        return (f"a convolution needs (batch, channels, height, width), but it "
                f"received {shape}: unflatten first, nn.Unflatten(1, (1, 28, 28)) for "
                "the images, or to (channels, height, width) after a Linear layer.")
    if isinstance(layer, _CONV) and x.dim() == 4 and x.shape[1] != layer.in_channels:
        return (f"it expects {layer.in_channels} input channels and receives "
                f"{x.shape[1]}: set in_channels to {x.shape[1]}, the out_channels of "
                "the layer before.")
    if isinstance(layer, nn.Linear) and x.shape[-1] != layer.in_features:
        if x.dim() > 2:
            return (f"it receives {shape}, not yet flat: put nn.Flatten() before it.")
        return (f"it expects {layer.in_features} inputs per image and receives "
                f"{x.shape[-1]}: set in_features to {x.shape[-1]} (channels x height "
                "x width of the layer before), or fix the sizes above.")
    lines = str(error).strip().splitlines()
    return f"it raised {type(error).__name__}: {lines[0] if lines else ''}"


def _trace(report: _Report, name: str, network: nn.Module, x: torch.Tensor):
    """Run ``x`` through ``network`` a layer at a time, noting each output shape.

    Returns the output and the steps ``(index, layer, input, output)``, or
    ``(None, steps)`` after reporting the layer that failed.
    """
    layers = list(network) if isinstance(network, nn.Sequential) else [network]
    report.note(f"{name}: input {tuple(x.shape)}")
    steps = []
    for index, layer in enumerate(layers):
        try:
            y = layer(x)
        except Exception as error:  # a learner's bug, reported rather than raised
            report.fail(f"{name} layer ({index}) {type(layer).__name__} accepts the "
                        f"shape {tuple(x.shape)} it receives",
                        _layer_hint(layer, x, error))
            return None, steps
        report.note(f"  ({index}) {type(layer).__name__:<16s} -> {tuple(y.shape)}")
        steps.append((index, layer, x, y))
        x = y
    return x, steps


def _encoder_hint(codes: torch.Tensor, latent_dim: int) -> str:
    if codes.dim() == 2 and codes.shape[1] == latent_dim:
        return ("it returns one number per latent unit; q(z|x) needs a mean and a "
                f"log-scale for each, so the last Linear needs 2 * latent_dim = "
                f"{2 * latent_dim} outputs.")
    if codes.dim() > 2:
        return ("its output is still a stack of feature maps: end with nn.Flatten() "
                f"and a Linear layer to 2 * latent_dim = {2 * latent_dim}.")
    return (f"it returns {tuple(codes.shape)}; the last Linear needs out_features = "
            f"2 * latent_dim = {2 * latent_dim}.")


def _decoder_hint(logits: torch.Tensor, steps) -> str:
    if logits.dim() == 4 and tuple(logits.shape[1:]) == (1, 28, 28):
        return ("it returns images (batch, 1, 28, 28); end with nn.Flatten() so that "
                "the logits are (batch, 784), one per pixel, as p(x|z) expects.")
    images = [y for *_, y in steps if y.dim() == 4]  # the last feature maps
    if images and tuple(images[-1].shape[-2:]) != (28, 28):
        return _where_the_size_breaks(images[-1], steps)
    if logits.dim() == 4:
        return (f"it returns {logits.shape[1]} channels; the last layer needs one "
                "output channel, one logit per pixel.")
    return (f"it returns {tuple(logits.shape)}; the decoder needs one logit per pixel, "
            "(batch, 784).")


def _where_the_size_breaks(images: torch.Tensor, steps) -> str:
    """The first transposed convolution that does not multiply the size by its stride."""
    height, width = images.shape[-2:]
    hint = f"it ends at {height}x{width} pixels, not 28x28."
    for index, layer, x, y in steps:
        if not isinstance(layer, nn.ConvTranspose2d) or layer.stride[0] == 1:
            continue
        n, m = x.shape[-1], y.shape[-1]
        (k,), (s,), (p,), (a,) = (layer.kernel_size[:1], layer.stride[:1],
                                  layer.padding[:1], layer.output_padding[:1])
        if m == n * s:
            continue
        hint += (f" Layer ({index}) ConvTranspose2d turns {n} pixels into {m}, not "
                 f"{n} x {s} = {n * s}: (n - 1) s - 2p + k + output_padding = "
                 f"({n} - 1)*{s} - 2*{p} + {k} + {a} = {m}.")
        if m == n * s - 1:
            hint += " output_padding=1 adds the missing pixel."
        elif m == n * s + 1:
            hint += " One pixel too many: padding one larger (and output_padding=1) " \
                    "fixes it."
        return hint
    return hint + (" Work the sizes above out with (n - 1) s - 2p + k + output_padding"
                   " for each transposed convolution.")


def _check_trains(report: _Report, model: VAE, images: torch.Tensor) -> None:
    what = ("trains inside vc.models.VAE: a finite -ELBO whose gradient reaches "
            "every parameter")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    try:
        with _seeded():
            loss, _ = reference_negative_elbo(model, images)
        gradients = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    except Exception as error:  # a learner's bug, reported rather than raised
        report.fail(what, f"it raised {type(error).__name__}: {error}")
        return
    if not bool(torch.isfinite(loss)):
        report.fail(what, f"the -ELBO is {float(loss)}.")
        return
    missing = [name for (name, _), grad in zip(named, gradients, strict=True)
               if grad is None]
    if missing:
        report.fail(what, f"no gradient reaches {missing[:4]}: those layers are not "
                    "on the path from the image to the loss.")
        return
    report.ok(f"{what} ({sum(p.numel() for _, p in named):,d} parameters)")


def conv_vae(encoder: nn.Module, decoder: nn.Module, latent_dim: int = 32) -> bool:
    """Check that an encoder and a decoder fit 28x28 images and a latent code.

    ``encoder`` maps flattened images (batch, 784) to (batch, 2 * latent_dim), the
    means and log-scales of q(z|x); ``decoder`` maps codes (batch, latent_dim) to
    (batch, 784) logits. The layers of an ``nn.Sequential`` run one at a time and
    the shape after each is printed, so a failure names the layer where the shapes
    break. Then both go into :class:`vae_course.models.VAE`, and one -ELBO must be
    finite with a gradient for every parameter. Returns True when all passed.
    """
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"pass the {name} as an nn.Module (an nn.Sequential); "
                            f"got {type(module).__name__}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) \
            or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer; got {latent_dim!r}")
    report = _Report(f"Checking a convolutional encoder and decoder for 28x28 images "
                     f"and latent_dim = {latent_dim}:")
    batch = 4
    generator = torch.Generator().manual_seed(0)
    images = _binary_images(batch, generator)
    codes = torch.randn(batch, latent_dim, generator=generator)
    shapes_fit = True
    with torch.no_grad():
        encoded, _ = _trace(report, "encoder", encoder, images)
        if encoded is not None:
            wanted = (batch, 2 * latent_dim)
            what = f"the encoder returns (batch, 2 * latent_dim) = {wanted}"
            if tuple(encoded.shape) == wanted:
                report.ok(what)
            else:
                report.fail(what, _encoder_hint(encoded, latent_dim))
                shapes_fit = False
        logits, steps = _trace(report, "decoder", decoder, codes)
        if logits is not None:
            what = f"the decoder returns (batch, 784) = {(batch, IMAGE_SIZE)} logits"
            if tuple(logits.shape) == (batch, IMAGE_SIZE):
                report.ok(what)
            else:
                report.fail(what, _decoder_hint(logits, steps))
                shapes_fit = False
    if shapes_fit and encoded is not None and logits is not None:
        _check_trains(report, VAE(encoder, decoder, latent_dim), images)
    return report.finish()
