r"""Instant feedback on a learner's own functions: property tests with diagnostics.

Each checker calls the function you wrote on small fixed inputs, compares it with
``torch.distributions`` and the helpers of :mod:`vae_course.elbo`, prints one line
per property (``✓`` passed, ``✗`` failed, with a hint on the likely mistake) and
returns ``True`` when everything passed. A wrong answer never raises: a function
that crashes is reported like any other mistake. Only misuse of the checker itself
(passing something that is not callable, an unknown option) raises.

=============================  ==================================================
checker                        the function it expects
=============================  ==================================================
:func:`kl_standard_normal`     ``fn(mu, log_var) -> (batch,)``, or ``fn(posterior)``
:func:`reparameterize`         ``fn(mu, log_var) -> z``, same shape as ``mu``
:func:`log_prob`               ``fn(value, logits)`` (Bernoulli) or
                               ``fn(value, loc, scale)`` (Normal)
:func:`negative_elbo`          ``fn(model, x) -> scalar loss`` (batch mean)
:func:`beta_vae_loss`          ``fn(reconstruction, kl, step, beta, warmup_steps)
                               -> (loss, negative_elbo)``
:func:`conv_vae`               an ``encoder`` and a ``decoder`` (not a function):
                               their shapes, layer by layer, for 28x28 images
=============================  ==================================================

Here ``log_var`` is :math:`\log\sigma^2`, one per latent unit, and ``x`` a batch of
binary images of shape (batch, 784).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from .elbo import LOG_2PI, elbo_terms
from .elbo import kl_standard_normal as kl_of_posterior
from .elbo import negative_elbo as reference_negative_elbo
from .models import IMAGE_SIZE, VAE, build_vae
from .train import warmup_weight

__all__ = ["beta_vae_loss", "conv_vae", "kl_standard_normal", "log_prob",
           "negative_elbo", "reparameterize"]

PASS, FAIL = "✓", "✗"


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

    generator = torch.Generator().manual_seed(0)
    batch, latent_dim = 3, 8
    mu = torch.randn(batch, latent_dim, generator=generator, dtype=torch.float64)
    log_var = torch.empty(batch, latent_dim, dtype=torch.float64).uniform_(
        -2.0, 1.0, generator=generator)
    mu.requires_grad_(True)
    log_var.requires_grad_(True)
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
        report.fail("is finite", "it returned nan or inf: log_var is log sigma^2 and "
                    "can be any real number; do not take its log or its square root.")
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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
    sample_hint = ("use rsample (or loc + scale * eps with eps = torch.randn_like(loc))"
                   ", not sample: sample() draws under torch.no_grad().")
    if not z.requires_grad:
        report.fail("lets the gradient reach the mean and the scale",
                    "gradient does not reach the mean or the scale: " + sample_hint)
        return report.finish()
    grad_mu, grad_log_var = torch.autograd.grad(
        z, [mu, log_var], torch.ones_like(z), allow_unused=True)
    missing = [name for name, grad in (("mean", grad_mu), ("scale", grad_log_var))
               if grad is None or not bool(grad.abs().sum() > 0)]
    if missing:
        report.fail("lets the gradient reach the mean and the scale",
                    f"gradient does not reach the {' or the '.join(missing)}: "
                    + sample_hint)
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


def log_prob(fn: Callable, family: str = "bernoulli") -> bool:
    """Check a learner's log-probability (or log-density) function.

    ``family="bernoulli"``: ``fn(value, logits)`` scores binary pixels under
    ``Bernoulli(logits=logits)``. ``family="normal"``: ``fn(value, loc, scale)``
    scores under ``Normal(loc, scale)``, with ``scale`` the standard deviation (as in
    a Gaussian decoder with a learned variance). Either may return one number per
    entry (the shape of ``value``) or per row (summed over the last dimension).
    A Bernoulli log-probability must refuse values outside {0, 1} (raise an error or
    return -inf), as ``torch.distributions`` does. Returns True when all passed.
    """
    _require_callable(fn)
    if family == "bernoulli":
        return _check_bernoulli(fn)
    if family == "normal":
        return _check_normal(fn)
    raise ValueError(f"family must be 'bernoulli' or 'normal'; got {family!r}")


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
        flipped = Bernoulli(logits=logits).log_prob(1 - pixels)
        if result.shape != pixels.shape:
            flipped = flipped.sum(-1)
        hint = f"expected {_listed(expected)}, got {_listed(result)}."
        if _close(result, -expected):
            hint += " That is minus the log-probability (a BCE loss), not log p."
        elif _close(result, flipped):
            hint += " That scores 1 - x: log p(x = 1) = log sigmoid(logit)."
        hint += " By hand: x * logits - softplus(logits)."
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
        hint = f"It returned {shown}, numbers that are no log-probabilities; " + hint
    report.fail(what, hint)


def _normal_candidates(value, loc, scale):
    """Common slips in a Normal log-density, each with its hint."""
    square = (value - loc) ** 2
    return [
        (-0.5 * LOG_2PI - scale.log() - square / (2 * scale**2), None),
        (0.5 * LOG_2PI + scale.log() + square / (2 * scale**2),
         "That is minus the log-density (a negative log-likelihood)."),
        (-scale.log() - square / (2 * scale**2),
         "The constant -1/2 log(2 pi) is missing."),
        (-0.5 * LOG_2PI - 2 * scale.log() - square / (2 * scale**2),
         "log sigma^2 was used where log sigma belongs: the normaliser of "
         "N(mu, sigma^2) is sigma sqrt(2 pi)."),
        (-0.5 * LOG_2PI - scale.log() - square / scale**2,
         "The factor 1/2 in front of (x - mu)^2 / sigma^2 is missing."),
        (-0.5 * LOG_2PI - scale.log() - square / (2 * scale),
         "(x - mu)^2 was divided by sigma, not by sigma^2."),
        (-0.5 * LOG_2PI - 0.5 * scale.log() - square / (2 * scale),
         "the scale was treated as a variance: Normal(loc, scale) takes the standard "
         "deviation."),
    ]


def _check_normal(fn) -> bool:
    report = _Report("Checking the Normal log-density, called as fn(value, loc, scale):")
    value = torch.tensor([[0.0, 1.0, 1.0], [0.3, -2.0, 4.0]], dtype=torch.float64)
    loc = torch.tensor([[0.0, 1.0, -2.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    scale = torch.tensor([[1.0, 0.1, 2.0], [0.5, 3.0, 1.5]], dtype=torch.float64)
    result = _call(report, fn, value, loc, scale)
    exact = Normal(loc, scale).log_prob(value)
    expected = _reduced_like(report, result, value, exact, "log-densities")
    if expected is None:
        return report.finish()
    report.ok(f"returns shape {tuple(result.shape)} for values of shape (2, 3)")
    what = "equals torch.distributions.Normal(loc, scale).log_prob"
    if _close(result, expected):
        report.ok(what)
        return report.finish()
    hint = f"expected {_listed(expected)}, got {_listed(result)}."
    for candidate, slip in _normal_candidates(value, loc, scale)[1:]:
        if result.shape != value.shape:
            candidate = candidate.sum(-1)
        if _close(result, candidate):
            hint += " " + slip
            break
    report.fail(what, hint)
    return report.finish()


# ------------------------------------------------------------------ negative ELBO


def _default_model_and_images():
    """A small seeded VAE whose posteriors are far from the prior, and 8 images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_vae(latent_dim=4, hidden_sizes=(32,))
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


def _loss_value(report, fn, model, images, what):
    """The learner's loss as a float, or None after reporting why it is not one."""
    result = _call(report, fn, model, images, what=what)
    if isinstance(result, tuple | list) and result:
        result = result[0]  # (loss, terms), like vc.elbo.negative_elbo
    if isinstance(result, _Crashed) or not _is_scalar_tensor(report, result, "loss"):
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


def _loss_hint(mean, tolerance, terms, latent_dim, batch) -> str:
    reconstruction, kl = terms["reconstruction"], terms["kl"]
    candidates = [
        (-(reconstruction / IMAGE_SIZE - kl).mean(),
         "Mean over pixels instead of sum: the reconstruction term is 784x too small "
         "next to the KL. Sum log p(x|z) over the 784 pixels (Independent, or "
         "reduction='sum')."),
        (-(reconstruction / IMAGE_SIZE - kl / latent_dim).mean(),
         "Mean over pixels and over latent units instead of sums: both terms are "
         f"too small (784x and {latent_dim}x). Sum within an image, average over "
         "the batch."),
        (-(reconstruction - kl / latent_dim).mean(),
         f"The KL is {latent_dim}x too small: sum it over the latent units, "
         "do not average."),
        (-(reconstruction + kl).mean(),
         "Flipped KL sign: the loss is -(reconstruction - KL) = -reconstruction + KL."),
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
    if (model is None) != (images is None):
        raise ValueError("pass both model and images, or neither")
    if model is None:
        model, images = _default_model_and_images()
    images = images.to(model.device)
    report = _Report(f"Checking the negative ELBO, called as fn(model, x) on "
                     f"{len(images)} images:")
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _check_negative_elbo(fn, model, images, num_calls, report)
    finally:
        model.train(was_training)


def _check_negative_elbo(fn, model, images, num_calls, report) -> bool:
    model.train()
    loss = _loss_value(report, fn, model, images, "your function runs")
    if loss is None:
        return report.finish()
    report.ok("returns one number for the batch")
    if not loss.requires_grad:
        report.fail("carries gradients to the model",
                    "the loss has no grad_fn: no .item(), .detach() or torch.no_grad().")
        return report.finish()
    report.ok("carries gradients to the model")
    with torch.no_grad():
        terms = elbo_terms(model, images, num_samples=2000)
        posterior = model.encode(images)
        at_mean = -(model.decode(posterior.mean).log_prob(images)
                    - kl_of_posterior(posterior)).mean()  # the loss at z = mu
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            values = [_loss_value(report, fn, model, images, f"runs in {mode} mode")
                      for _ in range(num_calls)]
        if any(value is None for value in values):
            return report.finish()
        values = torch.stack(values).double()
        mean, spread = float(values.mean()), float(values.std())
        what = f"its average over {num_calls} calls in {mode} mode is the -ELBO"
        if spread == 0.0:
            hint = ("The loss is the same on every call: it does not draw z from "
                    "q(z|x). If it uses z = mu here: a test loss computed at z = mu "
                    "is not an ELBO estimate; draw z with rsample in every mode.")
            if abs(mean - float(at_mean)) < 1e-3 * abs(mean) + 1e-3:
                hint = ("It is computed at z = mu: a test loss computed at z = mu is "
                        "not an ELBO estimate (it skips the expectation over "
                        "q(z|x)); draw z with rsample in evaluation mode too.")
            report.fail(what, hint)
            continue
        # The reference averages 2000 draws per image, as many as 2000 calls.
        reference_se = spread / math.sqrt(2000)
        tolerance = 5 * math.sqrt(spread**2 / num_calls + reference_se**2)
        expected = float(-terms["elbo"].mean())
        if abs(mean - expected) < tolerance + 1e-4 * abs(expected):
            report.ok(f"{what} ({expected:.1f} nats per image)")
        else:
            report.fail(what, _loss_hint(mean, tolerance, terms, model.latent_dim,
                                         len(images)))
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
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
