r"""Instant feedback on a learner's own functions: property tests with diagnostics.

Each checker calls the function you wrote on small fixed inputs, compares it with
``torch.distributions`` and the helpers of :mod:`vae_course.elbo`, prints one line
per property (``✓`` passed, ``✗`` failed, with a hint on the likely mistake) and
returns ``True`` when everything passed. A wrong answer never raises: a function
that crashes is reported like any other mistake. Only misuse of the checker itself
(passing something that is not callable, an unknown option) raises.

====================================  ==================================================
checker                               the function it expects
====================================  ==================================================
:func:`kl_standard_normal`            ``fn(mu, log_var) -> (batch,)``, or
                                      ``fn(posterior)``
:func:`reparameterize`                ``fn(mu, log_var) -> z``, same shape as ``mu``
:func:`log_prob`                      ``fn(value, logits)`` (Bernoulli) or
                                      ``fn(value, loc, scale)`` (Normal)
:func:`negative_elbo`                 ``fn(model, x) -> scalar loss`` (batch mean)
:func:`quadrature_log_likelihood`     ``fn(model, x, axis) -> log p(x)`` of one image
                                      of a model with two latent units
====================================  ==================================================

Here ``log_var`` is :math:`\log\sigma^2`, one per latent unit, and ``x`` a batch of
binary images of shape (batch, 784).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Bernoulli, Independent, Normal

from .elbo import LOG_2PI, elbo_terms
from .elbo import kl_standard_normal as kl_of_posterior
from .gaps import codes_of, log_joint
from .models import IMAGE_SIZE, build_vae

__all__ = ["kl_standard_normal", "log_prob", "negative_elbo",
           "quadrature_log_likelihood", "reparameterize"]

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


# ------------------------------------------------------- log p(x) by quadrature


def _two_latent_cases():
    """A small 2-D model, an image whose posterior is near the origin, one far out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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
