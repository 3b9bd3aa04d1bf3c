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
:func:`elbo_estimate`          ``fn(model, x) -> test -ELBO`` (an evaluation)
:func:`encoder_head`           ``head(h) -> (mu, log_var)``, the last encoder layer
:func:`posterior`              ``fn(mu, log_var) -> q(z|x)``, a distribution
:func:`interpolation`          ``fn(model, x_a, x_b, steps) -> (steps, 784)``
=============================  ==================================================

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
from .models import IMAGE_SIZE, build_vae

__all__ = ["elbo_estimate", "encoder_head", "interpolation", "kl_standard_normal",
           "log_prob", "negative_elbo", "posterior", "reparameterize"]

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


def _references(model, images) -> tuple[dict, float]:
    """A precise estimate of each ELBO term per image, and the -ELBO at z = mu."""
    with torch.no_grad():
        terms = elbo_terms(model, images, num_samples=2000)
        posterior = model.encode(images)
        at_mean = -(model.decode(posterior.mean).log_prob(images)
                    - kl_of_posterior(posterior)).mean()  # the loss at z = mu
    return terms, float(at_mean)


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


def _loss_hint(mean, tolerance, terms, latent_dim, batch, at_mean) -> str:
    reconstruction, kl = terms["reconstruction"], terms["kl"]
    candidates = [
        (at_mean, "It is close to the loss at z = mu: decode draws of z from q(z|x), "
                  "not the posterior mean."),
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return check(model, images, report)
    finally:
        model.train(was_training)


def _check_negative_elbo(fn, model, images, report, num_calls) -> bool:
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
    terms, at_mean = _references(model, images)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        what = f"its average over {num_calls} calls in {mode} mode is the -ELBO"
        if not _compare_with_elbo(report, fn, model, images, num_calls, what,
                                  terms, at_mean):
            break
    return report.finish()


def _compare_with_elbo(report, fn, model, images, num_calls, what, terms, at_mean,
                       allow_float=False) -> bool:
    """Average ``num_calls`` calls of a loss and compare it with the precise -ELBO.

    Returns False when a call crashed or returned no number, True otherwise.
    """
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
        report.fail(what, _loss_hint(mean, tolerance, terms, model.latent_dim,
                                     len(images), at_mean))
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
    terms, at_mean = _references(model, images)
    what = f"its average over {num_calls} calls is the -ELBO"
    _compare_with_elbo(report, fn, model, images, num_calls, what, terms, at_mean,
                       allow_float=True)
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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
    generator = torch.Generator().manual_seed(0)
    batch, latent_dim = 3, 8
    mu = torch.randn(batch, latent_dim, generator=generator, dtype=torch.float64)
    log_var = torch.empty(batch, latent_dim, dtype=torch.float64).uniform_(
        -4.0, 3.0, generator=generator)
    mu.requires_grad_(True)
    log_var.requires_grad_(True)
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
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
