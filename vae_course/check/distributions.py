"""Checkers for distributions: log-probabilities, KLs, q(z|x) and a mixture prior."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
)

from ..elbo import LOG_2PI
from ._fixtures import diagonal_gaussian, gaussian_parameters, kl_closed_form
from ._report import (
    LOG_VAR_IS_ANY_REAL,
    TOO_EARLY,
    USE_RSAMPLE,
    Report,
    close,
    expected_got,
    explain,
    finite,
    listed,
    require_callable,
    seeded,
)

KL_FORMULA = "1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)"
SIGMA_IS = "sigma = exp(0.5 * log_var)"


def _kl_hint(result, mu, log_var) -> str:
    """What the learner's KL most likely got wrong, from the numbers alone."""
    expected, latent_dim = kl_closed_form(mu, log_var), mu.shape[-1]
    sigma = (0.5 * log_var).exp()

    def kl_with(variance, log_variance):  # the formula, with these two terms in it
        return 0.5 * (mu**2 + variance - 1 - log_variance).sum(-1)

    slips = [
        (-expected, "KL has the wrong sign: it is exactly minus the KL. KL(q || p) = "
         f"{KL_FORMULA} >= 0."),
        (expected / latent_dim, f"KL is {latent_dim}x too small: did you average over "
         "the latent units (.mean) instead of summing (.sum(dim=-1))?"),
        (kl_with(log_var.square(), log_var.square().log()), "Your function treats its "
         "second argument as sigma, but it is log sigma^2 (the log-variance). If you "
         "passed sigma where log sigma^2 was expected, this is what comes out: "
         "sigma^2 = log_var.exp(), log sigma^2 = log_var."),
        (kl_with((2 * log_var).exp(), 2 * log_var), "Your function treats log sigma^2 "
         "as log sigma: the variance is log_var.exp(), not (2 * log_var).exp()."),
        (kl_with(sigma, log_var), "sigma was used where sigma^2 belongs: the variance "
         "term is sigma^2 = exp(log sigma^2) = log_var.exp(); exp(0.5 * log_var), like "
         "log_var.exp().sqrt(), is sigma itself."),
        (kl_with(sigma, sigma.log()), "sigma was used where sigma^2 belongs, in both "
         "terms: sigma^2 = exp(log sigma^2) = log_var.exp(), log sigma^2 = log_var."),
        (2 * expected, "KL is 2x too large: the factor 1/2 is missing."),
        (expected / 2, "KL is 2x too small: the factor 1/2 was applied twice."),
        (expected + latent_dim / 2, "KL is too large by latent_dim / 2 per example: the "
         "-1 inside the sum is missing."),
        (expected - 0.5 * (mu**2).sum(-1), "The mu^2 term is missing."),
    ]
    if hint := explain(slips, lambda value: close(result, value, 1e-4)):
        return hint
    if bool((result < -1e-6).any()):
        return ("KL is negative for some inputs: a KL divergence is never negative; "
                "check the sign of each term.")
    return (f"expected {listed(expected)}, got {listed(result)}: compare each term "
            f"with {KL_FORMULA}.")


def kl_standard_normal(fn: Callable, takes: str = "mu_log_var") -> bool:
    """Check ``fn(mu, log_var) -> (batch,)``, KL(q(z|x) || N(0, I)) per example.

    ``takes="posterior"`` calls ``fn(q)``, q = Independent(Normal(mu, sigma), 1).
    """
    require_callable(fn)
    if takes not in ("mu_log_var", "posterior"):
        raise ValueError(f"takes must be 'mu_log_var' or 'posterior'; got {takes!r}")
    signature = "fn(mu, log_var)" if takes == "mu_log_var" else "fn(posterior)"
    report = Report(f"Checking the KL to N(0, I), called as {signature}:")

    def run(mu, log_var):
        if takes == "mu_log_var":
            return report.call(fn, mu, log_var)
        return report.call(fn, diagonal_gaussian(mu, log_var))

    mu, log_var = gaussian_parameters(-2.0, 1.0)  # (3, 8) each
    batch, latent_dim = mu.shape

    def shape_hint(shape):
        return (f"for {batch} examples with {latent_dim} latent units it returned shape "
                f"{shape}; sum over the latent units only (.sum(dim=-1)), so that each "
                "example gets its own KL, and average over the batch later, in the "
                "loss." + (TOO_EARLY if shape == () else ""))

    result = run(mu, log_var)
    if not (report.shaped(result, (batch,), "the KL of each example",
                          f"returns one KL per example, shape ({batch},)", shape_hint)
            and report.require("is finite", finite(result), LOG_VAR_IS_ANY_REAL)):
        return report.finish()
    report.check("carries gradients back to mu and log_var", result.requires_grad,
                 "the result has no grad_fn: compute it with torch operations only "
                 "(no .item(), .detach(), NumPy or torch.no_grad()).")

    def zeros():  # fresh each time, in case the learner's function writes in place
        return torch.zeros(2, latent_dim, dtype=torch.float64)

    at_prior = run(zeros(), zeros())
    if report.tensor(at_prior, "the KL at the prior"):
        report.check("is 0 when q(z|x) is the prior itself (mu = 0, log_var = 0)",
                     close(at_prior, zeros()[:, 0]), lambda: f"it returned "
                     f"{listed(at_prior)}. " + _kl_hint(at_prior, zeros(), zeros()))
    report.check(f"equals {KL_FORMULA} on random inputs",
                 close(result, kl_closed_form(mu, log_var)),
                 lambda: _kl_hint(result.detach(), mu.detach(), log_var.detach()))
    return report.finish()


# -------------------------------------------------------------------- log_prob


def log_prob(fn: Callable, family: str = "bernoulli", takes: str | None = None) -> bool:
    """Check a log-probability: ``fn(value, logits)`` for ``family="bernoulli"``
    (values other than 0 and 1 must be refused: raise, or return -inf), and for
    ``family="normal"`` ``fn(value, loc, scale)``, or ``fn(value, loc, log_var)``
    with ``takes="log_var"``. One number per entry, or per row.
    """
    require_callable(fn)
    allowed = {"bernoulli": ("logits",), "normal": ("scale", "log_var")}
    if family not in allowed:
        raise ValueError(f"family must be 'bernoulli' or 'normal'; got {family!r}")
    takes = takes or allowed[family][0]
    if takes not in allowed[family]:
        raise ValueError(f"takes must be one of {allowed[family]} for family "
                         f"{family!r}; got {takes!r}")
    return _check_bernoulli(fn) if family == "bernoulli" else _check_normal(fn, takes)


def _reduced_like(report, result, value, reference, what) -> torch.Tensor | None:
    """``reference`` reduced as the learner reduced: per entry or summed per row."""
    if not report.tensor(result, what):
        return None
    if result.shape in (value.shape, value.shape[:-1]):
        report.ok(f"returns shape {tuple(result.shape)} for values of shape (2, 3)")
        return reference if result.shape == value.shape else reference.sum(-1)
    report.fail(f"returns {what}", f"for values of shape {tuple(value.shape)} it "
                f"returned shape {tuple(result.shape)}; return one number per entry, "
                "or per row (summed over the last dimension).")
    return None


def _check_bernoulli(fn) -> bool:
    report = Report("Checking the Bernoulli log-probability, called as "
                    "fn(value, logits):")
    logits = torch.tensor([[5.0, 3.0, 1.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    pixels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    result = report.call(fn, pixels, logits)
    exact = Bernoulli(logits=logits).log_prob(pixels)  # (2, 3)
    expected = _reduced_like(report, result, pixels, exact, "log-probabilities")
    if expected is None:
        return report.finish()
    report.check("is <= 0 for pixels 0 and 1", not bool((result > 1e-9).any()),
                 "log-probabilities of a discrete distribution must be <= 0, since "
                 f"probabilities are <= 1; it returned {listed(result)}.")
    slips = [(-exact, "That is minus the log-probability (a BCE loss), not log p."),
             (Bernoulli(logits=logits).log_prob(1 - pixels),
              "That scores 1 - x: log p(x = 1) = log sigmoid(logit).")]
    report.check("equals torch.distributions.Bernoulli(logits=...).log_prob",
                 close(result, expected), lambda: expected_got(result, expected, slips)
                 + " By hand: x * logits - softplus(logits).")
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
    is_tensor = isinstance(result, torch.Tensor)
    hint = ("Score only 0 and 1: check the values first and raise ValueError, as "
            "torch.distributions.Bernoulli does (its validate_args); binarize grey "
            "images before scoring them.")
    if is_tensor and bool((result > 0).any()):
        hint = ("log-probabilities of a discrete distribution must be <= 0: "
                f"{name.split(',')[0]} returned positive values {listed(result)}. "
                + hint)
    else:
        shown = listed(result) if is_tensor else repr(result)
        hint = f"It returned {shown}: numbers that are no log-probabilities. " + hint
    report.check(what, is_tensor and bool((result == -math.inf).all()), hint)


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
                 f"{SIGMA_IS}.")
        as_variance = ("exp(0.5 * log_var) is the standard deviation, used here as the "
                       "variance: sigma^2 = exp(log_var).")
    return [
        (-right, "That is minus the log-density (a negative log-likelihood)."),
        (right + 0.5 * LOG_2PI, "The constant -1/2 log(2 pi) is missing."),
        (-square / (2 * sigma**2), "The normaliser -log sigma - 1/2 log(2 pi) is "
         "missing: what is left is a squared error scaled by 1/(2 sigma^2), an MSE "
         "loss, not a log-density."),
        (right - sigma.log(), "log sigma^2 was used where log sigma belongs: the "
         "normaliser of N(mu, sigma^2) is sigma sqrt(2 pi)."),
        (right - square / (2 * sigma**2),
         "The factor 1/2 in front of (x - mu)^2 / sigma^2 is missing."),
        (-0.5 * LOG_2PI - sigma.log() - square / (2 * sigma),
         "(x - mu)^2 was divided by sigma, not by sigma^2."),
        (log_normal(sigma**2), as_sd),
        (log_normal(sigma.sqrt()), as_variance),
    ]


def _check_normal(fn, takes: str) -> bool:
    report = Report(f"Checking the Normal log-density, called as "
                    f"fn(value, loc, {takes}):")
    value = torch.tensor([[0.0, 1.0, 1.0], [0.3, -2.0, 4.0]], dtype=torch.float64)
    loc = torch.tensor([[0.0, 1.0, -2.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.1, 2.0], [0.5, 3.0, 1.5]], dtype=torch.float64)
    given = sigma if takes == "scale" else 2 * sigma.log()  # what fn receives
    result = report.call(fn, value, loc.clone().requires_grad_(True),
                         given.requires_grad_(True))
    exact = Normal(loc, sigma).log_prob(value)
    expected = _reduced_like(report, result, value, exact, "log-densities")
    if expected is None or not report.require(
            "is finite", finite(result), LOG_VAR_IS_ANY_REAL if takes == "log_var"
            else "it returned nan or inf: the scale is positive, so check each log."):
        return report.finish()
    report.check(f"carries gradients back to loc and {takes}", result.requires_grad,
                 f"the result has no grad_fn: a decoder learns loc and {takes} by this "
                 "gradient; no .item(), .detach() or NumPy.")
    report.check("equals torch.distributions.Normal(loc, sigma).log_prob",
                 close(result, expected), lambda: expected_got(
                     result, expected, _normal_slips(value, loc, sigma, takes)))
    return report.finish()


# --------------------------------------------------------------------- q(z|x)


def posterior(fn: Callable) -> bool:
    """Check ``fn(mu, log_var) -> q(z|x)``, a diagonal Gaussian distribution such as
    ``Independent(Normal(mu, (0.5 * log_var).exp()), 1)`` whose ``rsample`` carries
    gradients to both inputs.
    """
    require_callable(fn)
    report = Report("Checking q(z|x), called as fn(mu, log_var):")
    mu, log_var = gaussian_parameters(-4.0, 3.0)  # (3, 8) each
    batch, latent_dim = mu.shape
    try:
        q = fn(mu, log_var)
    except Exception as error:  # a learner's bug, reported rather than raised
        hint = f"it raised {type(error).__name__}: {error}"
        if isinstance(error, ValueError):
            hint = f"it raised ValueError: {str(error).splitlines()[0][:120]}"
            if "scale" in str(error):
                hint += ("\nThe scale must be positive, and log_var can be negative: "
                         f"the scale is {SIGMA_IS}.")
        report.fail("your function runs", hint)
        return report.finish()
    if not report.check("returns a torch.distributions object",
                        isinstance(q, Distribution), f"it returned {type(q).__name__}; "
                        "return the distribution itself, e.g. Independent(Normal(loc, "
                        "scale), 1)."):
        return report.finish()
    shapes = tuple(q.batch_shape), tuple(q.event_shape)
    hint = f"it has batch shape {shapes[0]} and event shape {shapes[1]}."
    if shapes == ((batch, latent_dim), ()):
        hint += (" Each latent unit is a distribution of its own: wrap the Normal in "
                 "Independent(..., 1), so that log_prob sums over the latent units and "
                 "gives one number per image.")
    if not report.check(f"has batch shape ({batch},) and event shape ({latent_dim},)",
                        shapes == ((batch,), (latent_dim,)), hint) and tuple(
            q.mean.shape) != tuple(mu.shape):
        return report.finish()  # moments of another shape cannot be compared
    _posterior_moments(report, q, mu.detach(), log_var.detach())
    what = "lets gradients of rsample() reach mu and log_var"
    try:
        z = q.rsample()
    except Exception as error:  # e.g. a distribution without rsample
        report.fail(what, f"rsample raised {type(error).__name__}: {error}")
        return report.finish()
    if report.require(what, z.requires_grad, "the draw carries no gradient: build the "
                      "distribution from mu and log_var themselves (no .detach(), "
                      ".item() or NumPy)."):
        grads = torch.autograd.grad(z.sum(), [mu, log_var], allow_unused=True)
        missing = [name for name, grad in zip(("mu", "log_var"), grads, strict=True)
                   if grad is None or not bool(grad.abs().sum() > 0)]
        report.check(what, not missing, f"no gradient reaches {' or '.join(missing)}: "
                     "build the distribution from both, without .detach().")
    return report.finish()


def _posterior_moments(report: Report, q, mu, log_var) -> None:
    report.check("has mean mu", close(q.mean, mu), lambda: (
        "mean and log-variance are swapped." if close(q.mean, log_var) else
        f"expected {listed(mu[0, :4])}..., got {listed(q.mean[0, :4])}..."))
    sigma, scale = (0.5 * log_var).exp(), q.stddev.detach()
    softplus = torch.nn.functional.softplus(log_var)
    slips = [
        (log_var.exp(), "That is exp(log_var) = sigma^2, the variance: Normal takes "
         "the standard deviation, exp(0.5 * log_var)."),
        (softplus, "That is softplus(log_var). Softplus suits a network that predicts "
         f"the scale itself; log_var is log sigma^2, so {SIGMA_IS}."),
        (softplus.sqrt(), "That is sqrt(softplus(log_var)): log_var is a log, undo it "
         f"with exp, not softplus; {SIGMA_IS}."),
        ((2 * log_var).exp(), f"That treats log_var as log sigma and squares it: "
         f"{SIGMA_IS}."),
        (log_var.abs(), f"That is |log_var|: {SIGMA_IS}."),
    ]
    report.check(f"has standard deviation {SIGMA_IS}, positive", close(scale, sigma),
                 lambda: explain(slips, lambda value: close(scale, value),
                                 f"expected {listed(sigma[0, :4])}..., got "
                                 f"{listed(scale[0, :4])}...; {SIGMA_IS}."))


# ------------------------------------------------------------- a mixture prior


def _mixture_setting():
    """A mixture of 3 Gaussians in 2-D with unequal weights: logits, means, log_vars."""
    logits = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    log_vars = torch.tensor([[0.0, -1.0], [-0.5, 0.5], [1.0, -2.0]],
                            dtype=torch.float64)
    return logits, means, log_vars  # (K,), (K, 2), (K, 2)


def _mixture_prior(logits, means, log_vars) -> MixtureSameFamily:
    """sum_k pi_k N(mu_k, diag sigma_k^2) with pi = softmax(logits): the reference."""
    return MixtureSameFamily(Categorical(logits=logits),
                             diagonal_gaussian(means, log_vars))


def _mixture_slips(z, logits, means, log_vars):
    """Common slips in a mixture's log-density: (what each computes, its hint)."""
    def log_components(scale):  # (n, K)
        return Independent(Normal(means, scale), 1).log_prob(z[:, None, :])

    log_n, log_weights = log_components((0.5 * log_vars).exp()), logits.log_softmax(-1)
    weights = "log pi = log_softmax(logits) (Categorical(logits=logits) holds it)"
    return [
        (log_n.logsumexp(-1), "The log mixture weights are missing: log p(z) = "
         f"logsumexp over k of (log pi_k + log N(z; mu_k, sigma_k^2)), with {weights}."),
        ((logits + log_n).logsumexp(-1),
         f"The weights are not normalised: add {weights}, not the raw logits."),
        ((log_weights.exp() + log_n).logsumexp(-1),
         f"The weights were added as probabilities: add their logs, {weights}."),
        (log_n.logsumexp(-1) - math.log(len(logits)),
         f"The weights were ignored (each component weighs 1/K): add {weights}."),
        ((log_weights.exp() * log_n).sum(-1), "That is sum_k pi_k log N_k, an average "
         "of log-densities (a lower bound, by Jensen), not log sum_k pi_k N_k: combine "
         "the components with torch.logsumexp."),
        ((log_weights + log_components(log_vars.exp())).logsumexp(-1), "log_vars is "
         "log sigma^2: the components' scale is exp(0.5 * log_vars), not "
         "exp(log_vars)."),
    ]


def mixture_prior_log_prob(fn: Callable) -> bool:
    """Check ``fn(z, logits, means, log_vars) -> (batch,)``: log sum_k pi_k N(z; mu_k,
    sigma_k^2) with pi = softmax(logits), near the components and far from them all,
    where every density underflows.
    """
    require_callable(fn)
    report = Report("Checking the mixture prior's log-density, called as "
                    "fn(z, logits, means, log_vars):")
    logits, means, log_vars = _mixture_setting()
    near = means[[0, 1, 2, 0, 1, 2]] + torch.randn(
        6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (near, logits, means, log_vars)]
    result = report.call(fn, *leaves)

    def shape_hint(shape):
        per_component = (" That is one per point and component: combine the 3 "
                         "components with torch.logsumexp over the component "
                         "dimension.")
        return (f"for 6 points it returned shape {shape}; return one log-density per "
                "point." + (per_component if shape == (6, 3) else ""))

    if not report.shaped(result, (6,), "log p(z) of each point",
                         "returns one log-density per point, shape (6,)", shape_hint):
        return report.finish()
    report.check("carries gradients back to z and to the prior's parameters",
                 result.requires_grad, "the result has no grad_fn: the encoder learns "
                 "through z, a learned prior through its parameters; no .item() or "
                 ".detach().")
    expected = _mixture_prior(logits, means, log_vars).log_prob(near)
    report.check("equals MixtureSameFamily(...).log_prob near the components",
                 close(result, expected), lambda: expected_got(
                     result, expected, _mixture_slips(near, *leaves[1:])))
    far = torch.tensor([[60.0, -60.0], [-80.0, 50.0]], dtype=torch.float64)
    result = report.call(fn, far, logits, means, log_vars,
                         what="runs on points far from every component")
    if report.tensor(result, "log p(z) far from the components"):
        expected = _mixture_prior(logits, means, log_vars).log_prob(far)
        underflows = result.shape == expected.shape and not finite(result)
        report.check("is finite and right far from every component, where densities "
                     "underflow", close(result, expected), lambda: (
                         f"it returned {listed(result)}: there each density exp(log N)"
                         " underflows to 0, and log(0) = -inf. Summing densities in "
                         "probability space, log(sum(pi * exp(log N))), fails there; "
                         "add in log space with torch.logsumexp." if underflows else
                         expected_got(result, expected, _mixture_slips(
                             far, logits, means, log_vars))))
    return report.finish()


# ----------------------------------------------------------- a Monte Carlo KL


def _mean_and_error(values: torch.Tensor):
    """Means over the second dimension of (3, n, ...) and their standard errors."""
    return values.mean(1), values.std(1) / math.sqrt(values.shape[1])


@seeded()
def monte_carlo_kl(fn: Callable, rows: int = 4000) -> bool:
    """Check ``fn(posterior, prior) -> (batch,)``, log q(z|x) - log p(z) at
    ``z = posterior.rsample()``: a KL to a prior with no closed form (a mixture).
    Each of three posteriors is repeated ``rows`` times, and the estimates' average
    and gradient in mu are compared with precise references.
    """
    require_callable(fn)
    report = Report("Checking the Monte Carlo KL, called as fn(posterior, prior):")
    prior = _mixture_prior(*_mixture_setting())
    mu = torch.tensor([[4.0, 4.0], [-2.0, 0.5], [0.5, -2.5]], dtype=torch.float64)
    log_var = torch.tensor([[-2.0, -2.5], [-1.0, -1.5], [-2.0, -1.0]],
                           dtype=torch.float64)
    result = report.call(fn, diagonal_gaussian(mu.clone().requires_grad_(True),
                                               log_var), prior)
    if not (report.shaped(result, (3,), "one estimate per example", "returns one "
                          "estimate per example, shape (3,)", lambda shape: "for 3 "
                          f"posteriors it returned shape {shape}; score z = "
                          "posterior.rsample() under both and subtract: (batch,).")
            and report.check("carries gradients back to mu", result.requires_grad,
                             "the result has no grad_fn: " + USE_RSAMPLE)):
        return report.finish()
    many = mu.repeat_interleave(rows, 0).requires_grad_(True)  # (3 * rows, 2)
    estimates = report.call(fn, diagonal_gaussian(many, log_var.repeat_interleave(
        rows, 0)), prior, what=f"runs on {3 * rows} rows")
    if report.tensor(estimates, "the estimates") and estimates.shape == (3 * rows,):
        (gradient,) = torch.autograd.grad(estimates.sum(), many)
        _compare_with_the_kl(report, estimates.detach().double().view(3, rows),
                             gradient.view(3, rows, 2), mu, log_var, prior)
    return report.finish()


def _compare_with_the_kl(report, estimates, gradients, mu, log_var, prior,
                         num_draws=100_000) -> None:
    value, value_error = _mean_and_error(estimates)
    slope, slope_error = _mean_and_error(gradients)
    leaf = mu.clone().requires_grad_(True)
    q = diagonal_gaussian(leaf, log_var)
    z = q.rsample((num_draws,))  # (S, 3, 2)
    # The reference gradient's error, for the same spread per draw as the learner's.
    reference_error = math.sqrt(estimates.shape[1] / num_draws)
    log_q, log_p = q.log_prob(z), prior.log_prob(z)  # (S, 3)
    kl, kl_error = _mean_and_error((log_q - log_p).detach().T)
    (reference_slope,) = torch.autograd.grad((log_q - log_p).mean(0).sum(), leaf)

    def near(a, b, *errors):
        return bool(((a - b).abs() < 5 * sum(e**2 for e in errors).sqrt() + 1e-6).all())

    slips = [
        (-kl, "That is minus the KL: the sign is flipped; the KL is log q(z|x) - "
         "log p(z), never negative on average."),
        (-log_p.detach().mean(0), "That is the cross-entropy -log p(z) alone: subtract "
         "the entropy, that is add log q(z|x)."),
        (-q.entropy().detach(),
         "That is log q(z|x) alone, minus the entropy: subtract log p(z)."),
        (kl_closed_form(mu, log_var), "That is the closed-form KL to N(0, I), but the "
         "prior is the mixture passed as `prior`: score z under it, prior.log_prob(z)."),
    ]
    report.check("its average over many draws is the KL",
                 near(value, kl, value_error, kl_error), lambda: expected_got(
                     value, kl, slips, lambda candidate: near(
                         value, candidate, value_error, kl_error), digits=2))
    what = "its gradient with respect to mu is the KL's gradient"
    if near(slope, reference_slope, slope_error, reference_error * slope_error):
        report.ok(what)
    elif near(slope, torch.zeros_like(slope), slope_error):
        report.fail(what, "it averages to zero: the gradient does not reach the encoder "
                    "through z; " + USE_RSAMPLE)
    else:
        report.fail(what, f"expected {listed(reference_slope, 2)}, got "
                    f"{listed(slope, 2)}: the gradient of a wrong value is wrong too; "
                    "make the average the KL first.")
