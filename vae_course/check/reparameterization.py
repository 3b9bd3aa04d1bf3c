"""Checkers for the encoder's output and the reparameterized draw from it."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._report import (
    CRASHED,
    USE_RSAMPLE,
    Report,
    close,
    listed,
    require_callable,
    seeded,
)

EXACT = 1e-12  # for numbers that must be the same, not merely close
NUM_DRAWS = 20_000


@seeded()
def reparameterize(fn: Callable) -> bool:
    """Check ``fn(mu, log_var) -> z``, a reparameterized draw from N(mu, sigma^2)
    such as ``mu + (0.5 * log_var).exp() * torch.randn_like(mu)``: fresh noise for
    every entry and every call, the right moments, gradients to both inputs.
    """
    require_callable(fn)
    report = Report("Checking the reparameterized draw, called as fn(mu, log_var):")
    base_mu = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    base_log_var = torch.tensor([-1.0, 0.5, 1.2], dtype=torch.float64)
    mu = base_mu.repeat(4, 1).requires_grad_(True)  # (4, 3)
    log_var = base_log_var.repeat(4, 1).requires_grad_(True)
    z = report.call(fn, mu, log_var)
    what = "lets the gradient reach the mean and the scale"
    if not (report.shaped(z, mu.shape, "the draws z", "returns z of the same shape as "
                          "mu, (4, 3)", lambda shape: f"it returned shape {shape}: draw "
                          "one noise value per entry, eps = torch.randn_like(mu).")
            and report.require("adds random noise", not close(z, mu, EXACT), "z equals "
                               "mu: no noise was added; z = mu + sigma * eps with eps = "
                               "torch.randn_like(mu).")
            and report.require(what, z.requires_grad, "gradient does not reach the "
                               "mean or the scale: " + USE_RSAMPLE)):
        return report.finish()
    grad_mu, grad_log_var = torch.autograd.grad(
        z, [mu, log_var], torch.ones_like(z), allow_unused=True)
    missing = [name for name, grad in (("mean", grad_mu), ("scale", grad_log_var))
               if grad is None or not bool(grad.abs().sum() > 0)]
    if not report.check(what, not missing, "gradient does not reach the "
                        f"{' or the '.join(missing)}: " + USE_RSAMPLE):
        return report.finish()
    z = z.detach()
    report.check("has the reparameterization gradients dz/dmu = 1, "
                 "dz/dlog_var = (z - mu) / 2",
                 close(grad_mu, torch.ones_like(z))
                 and close(grad_log_var, 0.5 * (z - base_mu)),
                 "z should be mu + exp(log_var / 2) * eps with eps ~ N(0, 1) drawn "
                 "independently of mu and log_var.")
    _check_draws(fn, report, base_mu, base_log_var)
    # Last, so that the extra call leaves the other checks' draws as they were.
    with torch.no_grad():
        again = report.call(fn, mu, log_var, what="draws fresh noise on every call")
    if isinstance(again, torch.Tensor) and close(again, z, EXACT):
        report.fail("draws fresh noise on every call",
                    "two calls with the same inputs gave identical draws: every call "
                    "must draw fresh noise. Do not reseed (torch.manual_seed) or "
                    "reuse a stored eps inside the function; draw eps = "
                    "torch.randn_like(mu) on each call.")
    return report.finish()


def _check_draws(fn, report: Report, base_mu, base_log_var) -> None:
    """The draws' noise, independence, mean and spread, from many rows at once."""
    mu, log_var = base_mu.repeat(NUM_DRAWS, 1), base_log_var.repeat(NUM_DRAWS, 1)
    with torch.no_grad():
        z = report.call(fn, mu, log_var, what=f"runs on a batch of {NUM_DRAWS} rows")
    if not report.tensor(z, "the draws z") or z.shape != mu.shape:
        return
    z = z.double()
    if not report.check("draws fresh noise for every row", not bool((z == z[:1]).all()),
                        "every row got the same eps: draw it with torch.randn_like(mu), "
                        "not torch.randn(latent_dim)."):
        return
    mean, spread = z.mean(0), z.std(0)
    sigma = (0.5 * base_log_var).exp()
    mean_ok = bool(((mean - base_mu).abs() < 5 * sigma / math.sqrt(NUM_DRAWS)).all())
    relative = 5 / math.sqrt(2 * NUM_DRAWS)

    def spread_is(scale):
        return bool(((spread / scale.abs() - 1).abs() < relative).all())

    if mean_ok and spread_is(sigma):
        report.ok("has mean mu and standard deviation exp(log_var / 2) "
                  f"({NUM_DRAWS} draws)")
        return
    hint = (f"mean {listed(mean, 3)} (want {listed(base_mu, 3)}), standard deviation "
            f"{listed(spread, 3)} (want {listed(sigma, 3)}).")
    if spread_is(base_log_var.exp()):
        hint += " exp(log_var) is the variance; the scale is exp(0.5 * log_var)."
    elif spread_is(base_log_var):
        hint += " log_var was used as sigma; the scale is exp(0.5 * log_var)."
    elif spread_is(torch.ones_like(sigma)):
        hint += " eps was not multiplied by the scale exp(0.5 * log_var)."
    report.fail("has mean mu and standard deviation exp(log_var / 2)", hint)


# ------------------------------------------------------------- the encoder head


def encoder_head(head: Callable, in_features: int, latent_dim: int) -> bool:
    """Check the last encoder layer, ``head(h) -> (mu, log_var)``: a module or a
    function from (batch, in_features) to two (batch, latent_dim) tensors, with no
    activation after them.
    """
    require_callable(head)
    report = Report(f"Checking the encoder head, called as head(h) on h of shape "
                    f"(5, {in_features}):")
    with seeded():
        hidden = torch.randn(5, in_features).relu()  # like the output of a ReLU layer
    parameters = list(head.parameters()) if hasattr(head, "parameters") else []
    device = parameters[0].device if parameters else torch.device("cpu")
    result = report.call(head, hidden.to(device))
    if result is CRASHED:
        return report.finish()
    what = "returns a pair (mu, log_var)"
    if isinstance(result, torch.Tensor) and result.shape == (5, 2 * latent_dim):
        report.fail(what, f"it returned one tensor of shape (5, {2 * latent_dim}); "
                    "split it into its two halves: mu, log_var = output.chunk(2, "
                    "dim=-1).")
        return report.finish()
    pair = (isinstance(result, tuple | list) and len(result) == 2
            and all(isinstance(part, torch.Tensor) for part in result))
    if not report.check(what, pair, f"it returned {type(result).__name__}; return two "
                        "tensors, return mu, log_var."):
        return report.finish()
    mu, log_var = result
    shapes = [tuple(part.shape) for part in result]
    if not report.check(f"gives mu and log_var of shape (5, {latent_dim}) each",
                        shapes == [(5, latent_dim)] * 2,
                        f"they have shapes {shapes[0]} and {shapes[1]}: one mean and "
                        "one log-variance per latent unit, for each of the 5 rows."):
        return report.finish()
    _check_head_outputs(report, mu, log_var, parameters)
    return report.finish()


def _check_head_outputs(report: Report, mu, log_var, parameters) -> None:
    if not report.check("gives mu and log_var their own outputs",
                        not close(mu, log_var, EXACT),
                        "mu and log_var are the same numbers: give each its own layer "
                        "(fc21 and fc22), or split one layer's 2 * latent_dim outputs."):
        return
    never_negative = [name for name, part in (("mu", mu), ("log_var", log_var))
                      if bool((part >= 0).all())]
    report.check("leaves both unconstrained: each takes negative and positive values",
                 not never_negative, f"{' and '.join(never_negative)} is never "
                 "negative: no ReLU, softplus or exp after the last layer. A "
                 "log-variance is any real number; the posterior turns it into a "
                 "positive scale.")
    if not parameters:
        return
    (mu.sum() + log_var.sum()).backward()
    missing = [index for index, parameter in enumerate(parameters)
               if parameter.grad is None or not bool(parameter.grad.abs().sum() > 0)]
    report.check("passes gradients to every weight of the head", not missing,
                 f"{len(missing)} of {len(parameters)} parameter tensors get no "
                 "gradient: no .detach(), .item() or torch.no_grad() inside, and use "
                 "every layer you define.")
    for parameter in parameters:
        parameter.grad = None
