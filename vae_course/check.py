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
:func:`bits_per_dim`           ``fn(log_p) -> (batch,)`` bits per dimension, from a
                               log-probability (or a dequantized log-density)
=============================  ==================================================

Here ``log_var`` is :math:`\log\sigma^2`, one per latent unit, and ``x`` a batch of
binary images of shape (batch, 784).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Bernoulli, Independent, Normal

from .distributions import NUM_LEVELS
from .elbo import LOG_2PI, elbo_terms
from .elbo import kl_standard_normal as kl_of_posterior
from .evaluate import bits_per_dim as nats_to_bits_per_dim
from .models import IMAGE_SIZE, build_vae

__all__ = ["bits_per_dim", "kl_standard_normal", "log_prob", "negative_elbo",
           "reparameterize"]

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
    probabilities = torch.rand(8, IMAGE_SIZE, generator=generator) * 0.6
    images = torch.bernoulli(probabilities, generator=generator)  # (8, 784), binary
    return model, images


def _loss_value(report, fn, model, images, what):
    """The learner's loss as a float, or None after reporting why it is not one."""
    result = _call(report, fn, model, images, what=what)
    if isinstance(result, tuple | list) and result:
        result = result[0]  # (loss, terms), like vc.elbo.negative_elbo
    if isinstance(result, _Crashed):
        return None
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
