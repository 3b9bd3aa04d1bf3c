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
:func:`iwae_bound`             ``fn(model, x, k) -> (batch,)``, the k-sample bound
=============================  ==================================================

Here ``log_var`` is :math:`\log\sigma^2`, one per latent unit, and ``x`` a batch of
binary images of shape (batch, 784).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Bernoulli, Independent, Normal

from .elbo import LOG_2PI, elbo_terms, log_importance_weights
from .elbo import kl_standard_normal as kl_of_posterior
from .models import IMAGE_SIZE, build_vae

__all__ = ["iwae_bound", "kl_standard_normal", "log_prob", "negative_elbo",
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
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) \
            or num_samples < 2:
        raise ValueError(f"num_samples must be an integer of at least 2 (at k = 1 "
                         f"the bound is the ELBO); got {num_samples!r}")
    model, images = _default_model_and_images()
    report = _Report(f"Checking the k-sample bound, called as fn(model, x, "
                     f"{num_samples}) on {len(images)} images:")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _check_iwae_bound(fn, model, images, num_samples, num_calls, report)


def _decoder_sees_reparameterized_codes(model) -> tuple[list[bool], Callable]:
    """Records, for every decoder call, whether its codes carry a gradient."""
    seen: list[bool] = []
    handle = model.decoder.register_forward_pre_hook(
        lambda module, inputs: seen.append(bool(inputs[0].requires_grad)))
    return seen, handle.remove


def _check_iwae_bound(fn, model, images, k, num_calls, report) -> bool:
    seen, remove_hook = _decoder_sees_reparameterized_codes(model)
    try:
        bound = _call(report, fn, model, images, k)
    finally:
        remove_hook()
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
