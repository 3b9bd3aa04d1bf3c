"""Checkers for log-likelihoods and their bounds: importance sampling, the k-sample
bound, quadrature in two latent units, and bits per dimension."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Independent, Normal, kl_divergence

from ..distributions import NUM_LEVELS
from ..elbo import LOG_2PI, log_importance_weights
from ..evaluate import bits_per_dim as nats_to_bits_per_dim
from ..gaps import codes_of, log_joint
from ..inputs import check_count
from ..models import IMAGE_SIZE, build_vae
from ._fixtures import decoder_inputs, default_model_and_images
from ._report import (
    CRASHED,
    TOO_EARLY,
    Report,
    close,
    explain,
    finite,
    listed,
    require_callable,
    seeded,
)

LOG_MEAN_EXP = "torch.logsumexp(log_w, dim=0) - math.log(K)"


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

    :math:`p(z) = \mathcal{N}(0, I)`, :math:`p(x|z) = \mathcal{N}(Wz + b, I)` over 784
    "pixels", with orthogonal columns of W, in float64. ``encode`` returns the true
    posterior shifted by 0.3 of its standard deviation and 1.2 times as wide. Its
    images have :math:`\log p(x)` near -1100 nats, where ``exp`` underflows.
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


# ------------------------------------------------- importance-sampled log p(x)


def _estimate_hint(result, exact, num_samples, draws, excess_at, elbo_gap) -> str:
    """The likely slip in an importance-sampled estimate, from numbers and draws."""
    excess = result - exact  # (batch,)
    log_k = math.log(num_samples)
    if all(abs(value - math.log(k)) < 0.3 for k, value in excess_at.items()):
        return (f"It is log p(x) + log K (here {excess.mean():.2f} too high, "
                f"log {num_samples} = {log_k:.2f}): the -log K of the mean is "
                f"missing; use {LOG_MEAN_EXP}.")
    if "prior" in draws:
        return ("z was drawn from the prior p(z). Its draws almost never land where "
                "the posterior lives; draw z from q(z|x), model.encode(x).sample((K,)), "
                "and weight each draw by p(x|z) p(z) / q(z|x).")
    if draws.count("posterior") > 1:
        return ("q(z|x) was sampled more than once: log p(x|z), log p(z) and "
                "log q(z|x) must all be evaluated at the same draws. Draw "
                "z = q.sample((K,)) once and use q.log_prob(z), not a new q.sample().")
    # Nearer the ELBO than log p(x) at every K: the log-weights were averaged.
    if all(abs(value + elbo_gap) < elbo_gap / 2 for value in excess_at.values()):
        return (f"That is the ELBO: the log-weights were averaged (a mean of logs), a "
                f"looser bound, here {-excess.mean():.2f} nats below log p(x). The "
                f"estimate is the log of the mean weight: {LOG_MEAN_EXP}.")
    if bool((excess > 0.3).all()):
        return (f"It lies above the exact log p(x) by {listed(excess, 2)} nats, yet "
                "with z ~ q(z|x) it is a lower bound in expectation. Are "
                "log p(x|z), log p(z) and log q(z|x) evaluated at the same z? Draw "
                "z = q.sample((K,)) once and use q.log_prob(z).")
    return (f"expected {listed(exact, 2)}, got {listed(result, 2)}. Check each term "
            "of log w = log p(x|z) + log p(z) - log q(z|x), with z ~ q(z|x), and "
            "that the mean over the K samples is taken in log space.")


@seeded()
def log_likelihood_estimate(fn: Callable, num_samples: int = 1000) -> bool:
    """Check ``fn(model, x, K) -> (batch,)``, importance-sampled log p(x) per image:
    the log of the mean weight p(x|z) p(z) / q(z|x) of K codes drawn from
    ``model.encode(x)``, on :class:`LinearGaussianVAE` with K = ``num_samples`` and
    a tenth of it.
    """
    require_callable(fn)
    check_count("num_samples", num_samples, 100)
    model = LinearGaussianVAE()
    x = model.images()
    exact = model.exact_log_likelihood(x)
    report = Report(f"Checking the log-likelihood estimate, called as fn(model, x, K) "
                    f"on {len(x)} images with exact log p(x) near {exact.mean():.0f}:")
    results, draws = {}, {}
    what = f"returns one estimate per image, shape ({len(x)},)"
    for k in (num_samples, num_samples // 10):
        model.draws.clear()
        result = report.call(fn, model, x, k)
        draws[k] = list(model.draws)
        if not report.tensor(result, "one estimate per image"):
            return report.finish()
        if result.shape != (len(x),):
            report.fail(what, f"for {len(x)} images and K = {k} it returned shape "
                        f"{tuple(result.shape)}: average over the K samples only "
                        "(the samples' dimension, dim=0 for z of shape "
                        "(K, batch, latent_dim)), not over the images.")
            return report.finish()
        results[k] = result.detach().double()
    report.ok(what)
    if not report.check("is finite although log w is near -1100 nats",
                        all(finite(r) for r in results.values()),
                        f"it returned {listed(results[num_samples], 2)}. The weights "
                        "were averaged in probability space: exp(-1100) underflows to "
                        "0 even in float64 (below about -745), and log 0 = -inf. Stay "
                        f"in log space: {LOG_MEAN_EXP}."):
        return report.finish()
    excess_at = {k: float((r - exact).mean()) for k, r in results.items()}
    # The ELBO of this proposal is below log p(x) by KL(q(z|x) || p(z|x)).
    true_posterior = Independent(Normal(*model.true_posterior(x)), 1)
    elbo_gap = float(kl_divergence(model.encode(x), true_posterior).mean())
    for k, result in results.items():
        what = f"is within 0.3 nats of the exact log p(x) with K = {k}"
        if bool(((result - exact).abs() < 0.3).all()):
            report.ok(what)
        else:
            report.fail(what, _estimate_hint(result, exact, k, draws[k], excess_at,
                                             elbo_gap))
    return report.finish()


# ------------------------------------------------------------- the k-sample bound


@seeded()
def iwae_bound(fn: Callable, num_samples: int = 10, num_calls: int = 200) -> bool:
    """Check ``fn(model, x, k) -> (batch,)``, the k-sample bound log (1/k) sum_i
    p(x, z_i) / q(z_i|x) from k reparameterized draws: its gradients, then its
    average over ``num_calls`` calls against a precise bound.
    """
    require_callable(fn)
    check_count("num_samples", num_samples, 2, " (at k = 1 the bound is the ELBO)")
    model, images = default_model_and_images()
    report = Report(f"Checking the k-sample bound, called as fn(model, x, "
                    f"{num_samples}) on {len(images)} images:")
    with decoder_inputs(model) as codes:
        bound = report.call(fn, model, images, num_samples)
    # For every decoder call, whether its codes carry a gradient (rsample).
    seen = [bool(z.requires_grad) for z in codes]
    batch = len(images)
    if not (report.shaped(bound, (batch,), "one bound per image",
                          f"returns one bound per image, shape ({batch},)",
                          lambda shape: f"it returned shape {shape}: combine the k "
                          "log-weights of each image (logsumexp over the samples' "
                          "dimension) and keep the batch dimension.")
            and report.check("is finite", finite(bound), lambda: f"it returned "
                             f"{listed(bound, 2)}. The log-weights here are near -580 "
                             "nats, so exp() of them is 0 in float32: never "
                             "exponentiate them; use torch.logsumexp(log_w, dim) - "
                             "math.log(k).")
            and _iwae_gradients(report, model, bound, seen)):
        return report.finish()
    with torch.no_grad():
        values = [report.call(fn, model, images, num_samples,
                              what="runs again")
                  for _ in range(num_calls)]
    if all(value is not CRASHED for value in values):
        draws = torch.stack([value.double() for value in values]).mean(1)  # (calls,)
        _compare_with_the_bound(report, model, images, num_samples, draws)
    return report.finish()


def _iwae_gradients(report, model, bound, seen) -> bool:
    """Whether gradients reach both networks, z through rsample included."""
    what = "carries gradients to the encoder and the decoder"
    if not bound.requires_grad:
        return report.fail(what, "the bound has no grad_fn: no .item(), .detach(), "
                           "NumPy or torch.no_grad().")
    what_z = "draws z with rsample: the gradient reaches the encoder through z"
    if seen and not any(seen):
        return report.fail(what_z, "the codes the decoder received carry no gradient: "
                           "draw z with posterior.rsample((k,)) (or mu + sigma * eps), "
                           "not sample(): sample() cuts the path from z back to the "
                           "encoder, which then learns only from log q(z|x).")
    networks = {"encoder": model.encoder, "decoder": model.decoder}
    gradients = torch.autograd.grad(
        bound.sum(), [p for net in networks.values() for p in net.parameters()],
        allow_unused=True)
    sizes = [len(list(net.parameters())) for net in networks.values()]
    missing = [name for name, grads in zip(
        networks, (gradients[:sizes[0]], gradients[sizes[0]:]), strict=True)
        if all(g is None or not bool(g.abs().sum() > 0) for g in grads)]
    if missing:
        return report.fail(what, f"no gradient reaches the {' or the '.join(missing)}.")
    return report.ok(what_z + ", and the decoder")


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
    elbo = log_w.mean(-1).mean().item()
    slips = [
        (elbo, "That is the ELBO: the log-weights were averaged (a mean of logs). The "
         "k-sample bound is the log of the mean weight: torch.logsumexp(log_w, dim) - "
         "math.log(k)."),
        (expected + math.log(k), f"It is too large by log k = {math.log(k):.2f} nats: "
         "the -log k is missing. logsumexp sums the k weights; the bound averages "
         "them."),
        (-expected, "That is minus the bound (a loss); the bound itself is "
         "log-mean-exp of the log-weights."),
        (-elbo, "That is minus the ELBO: the log-weights were averaged, and the sign "
         "is flipped."),
    ]
    report.check(f"its average over {len(draws)} calls is L_{k}, the k-sample bound",
                 abs(mean - expected) < tolerance, lambda: explain(
                     slips, lambda value: abs(mean - value) < tolerance,
                     f"expected about {expected:.2f} nats per image, got {mean:.2f}: "
                     "log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), then "
                     "torch.logsumexp over the k samples, minus math.log(k)."))


# ------------------------------------------------------- log p(x) by quadrature


def _two_latent_cases():
    """A small 2-D model, an image whose posterior is near the origin, one far out."""
    with seeded():
        model = build_vae(latent_dim=2, hidden_sizes=(16,)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.decoder[0].weight.mul_(3.0)  # a posterior narrower than the prior
        images = torch.bernoulli(model.decode(torch.tensor([[0.3, -0.5], [3.2, -3.4]])
                                              ).mean, generator=generator)  # (2, 784)
    return model, images


def _quadrature_hint(result, exact, joint, axis, far_out, peak) -> str:
    log_step, count = math.log(float(axis[1] - axis[0])), len(axis)
    log_prior = -0.5 * (codes_of(axis, axis).double()**2).sum(-1) - LOG_2PI
    if not math.isfinite(result):
        return ("It returned -inf or nan: the densities p(x, z) of a whole image are "
                "far below what a float32 holds (below about e^-104 it rounds to 0), "
                "so their sum underflows. Stay in log space: "
                "torch.logsumexp(log_joint, 0) + 2 * log(step).")
    slips = [
        (exact - 2 * log_step, "The log of the cell area is missing: the sum "
         "approximates the integral only once each term is multiplied by the area of "
         "its cell, step**2; add 2 * log(step) to the logsumexp."),
        (exact - log_step, "Only one side of the cell was counted: a cell of the 2-D "
         "grid has area step**2, so add 2 * log(step), not log(step)."),
        (exact - 2 * math.log(count), "That is the log of the mean of the densities "
         "over the grid, not of their sum times the cell area (the mean leaves out the "
         "area of the whole box). Use logsumexp, not a mean, and add 2 * log(step)."),
        (float(torch.logsumexp(joint.double() - log_prior, 0)) + 2 * log_step,
         "log p(z) is missing: the integrand is p(x|z) p(z), so add the prior's "
         "log-density at each code before the logsumexp."),
    ]
    if hint := explain(slips, lambda value: abs(result - value)
                       < 1e-3 * max(1.0, abs(value))):
        return hint
    if far_out and result < exact:
        return (f"Too low for an image whose posterior sits near z = ({peak[0]:.1f}, "
                f"{peak[1]:.1f}): does your grid reach it? Build the grid from the "
                "axis you are given (every pair of its values), not from a range of "
                "your own.")
    return (f"expected {exact:.3f}, got {result:.3f}: sum p(x|z) p(z) over every "
            "pair of axis values in log space, then add 2 * log(step).")


def quadrature_log_likelihood(fn: Callable) -> bool:
    r"""Check ``fn(model, x, axis)``: log p(x) of one image by a sum over a 2-D grid.

    The grid is every pair of values of ``axis`` (equally spaced cell centres), and
    the answer :math:`\operatorname{logsumexp}_j \log p(x, z_j) + 2 \log(\text{step})`,
    a number. Checked for posteriors near the origin and far out. Returns True when
    all passed.
    """
    require_callable(fn)
    report = Report("Checking log p(x) by quadrature, called as fn(model, x, axis):")
    model, images = _two_latent_cases()
    cases = [("near the origin", images[0], torch.linspace(-4.0, 4.0, 161), False),
             ("far from the origin", images[1], torch.linspace(-6.0, 6.0, 241), True)]
    for where, x, axis, far_out in cases:
        what = f"equals the grid's sum for an image whose posterior is {where}"
        with torch.no_grad():
            result = report.call(fn, model, x, axis.clone(), what=what)
        if result is CRASHED:
            continue
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if not isinstance(result, int | float):
            report.fail(what, f"it returned {type(result).__name__}; return one "
                        "number, log p(x) of the image")
            continue
        joint = log_joint(model, x[None], codes_of(axis, axis))[0]
        best = int(joint.argmax())  # the grid's cell nearest the posterior's peak
        peak = float(axis[best // len(axis)]), float(axis[best % len(axis)])
        exact = (float(torch.logsumexp(joint.double(), 0))
                 + 2 * math.log(float(axis[1] - axis[0])))
        if math.isfinite(result) and abs(result - exact) < 1e-3 * max(1.0, abs(exact)):
            report.ok(what)
        else:
            report.fail(what, _quadrature_hint(float(result), exact, joint, axis,
                                               far_out, peak))
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
        (1.0, ""),
        (LN2, "Nats are not bits: divide by ln 2 as well (1 bit = ln 2 nats); as it "
         "is, this is nats per dimension."),
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
    return explain(slips, lambda value: abs(ratio / value - 1) < 1e-6)


def _intercept_slip(intercept: float, ratio: float, dequantized: bool,
                    num_dims: int) -> str | None:
    """What is wrong with the constant the learner added, or None if it is right."""
    def near(value):
        return abs(intercept - value) < 1e-6 * max(1.0, abs(value))

    # The bin width's 8 bits, converted like the rest (right or with the same slip).
    if any(near(value) for value in ({BIN_BITS, BIN_BITS * ratio} if dequantized
                                     else {0.0})):
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
         f"{num_dims} log(1/256), so -log P is 8 bits per dimension larger, not "
         "smaller."),
        (math.log(NUM_LEVELS), "ln 256 is in nats: in bits the bin width adds "
         "log2 256 = 8 per dimension."),
        (math.log10(NUM_LEVELS), "log10 256 is in digits: in bits the bin width adds "
         "log2 256 = 8 per dimension."),
        (BIN_BITS * num_dims, f"8 bits per pixel is {8 * num_dims} per image, but the "
         f"rest is per dimension: add 8, not 8 x {num_dims}."),
        (num_dims * math.log(NUM_LEVELS), f"{num_dims} ln 256 is in nats per image: add "
         "it before converting, or add 8 bits per dimension after."),
    ]
    return explain(slips, near, f"It adds {intercept:.4g} bits per dimension; the bin "
                   "width 1/256 adds log2 256 = 8.")


def _bits_hint(result, log_p, expected, dequantized, num_dims) -> str:
    """The learner's slips, read from the line through their outputs."""
    result, log_p = result.detach().double(), log_p.double()
    design = torch.stack([torch.ones_like(log_p), -log_p], 1)  # (batch, 2)
    fitted = torch.linalg.lstsq(design, result[:, None]).solution[:, 0]
    intercept, slope = float(fitted[0]), float(fitted[1])
    shown = f"expected {listed(expected)}, got {listed(result)}."
    if not close(design @ fitted, result, 1e-6):
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
    hints += [slope_hint, _intercept_slip(intercept, abs(ratio), dequantized, num_dims)]
    return " ".join([shown, *filter(None, hints)])


def bits_per_dim(fn: Callable, dequantized: bool = False,
                 num_dims: int = IMAGE_SIZE) -> bool:
    r"""Check ``fn(log_p) -> (batch,)``, nats per image to bits per dimension.

    ``log_p`` is :math:`\log P(x)` of 256-level images, and the answer
    :math:`-\log P(x) / (D \ln 2)`; with ``dequantized=True`` it is a log-density of
    dequantized pixels in [0, 1], and the answer adds each pixel's bin width 1/256,
    :math:`(-\log p(y) + D \ln 256) / (D \ln 2)`. D is ``num_dims``. Returns True
    when all passed.
    """
    require_callable(fn)
    check_count("num_dims", num_dims, 1)
    kind = "log-density of dequantized pixels" if dequantized else "log-probability"
    report = Report(f"Checking bits per dimension from a {kind} in nats, called as "
                    f"fn(log_p) with {num_dims} dimensions:")
    uniform = 0.0 if dequantized else -num_dims * math.log(NUM_LEVELS)
    if dequantized:  # densities: above and below 1
        log_p = torch.tensor([1500.0, 320.5, 0.0, -80.25], dtype=torch.float64)
    else:  # probabilities: at most 1
        log_p = -torch.tensor([60.0, 543.4, 1234.5, 3000.0], dtype=torch.float64)
    result = report.call(fn, log_p.clone())
    if not (report.shaped(result, log_p.shape, "bits per dimension of each image",
                          f"returns one number per image, shape ({len(log_p)},)",
                          lambda shape: f"for {len(log_p)} images it returned shape "
                          f"{shape}; convert each image's log-likelihood, and average "
                          "later." + (TOO_EARLY if shape == () else ""))
            and report.require("is finite", finite(result),
                               lambda: f"it returned {listed(result)}.")):
        return report.finish()
    expected = nats_to_bits_per_dim(-log_p, num_dims) + (BIN_BITS if dequantized else 0)
    at_uniform = report.call(fn, torch.full((1,), uniform, dtype=torch.float64),
                             what="runs on one image")
    if report.tensor(at_uniform, "bits per dimension"):
        report.check(
            "gives 8 bits per dimension for the uniform distribution over 256 levels",
            at_uniform.numel() == 1 and abs(float(at_uniform.reshape(())) - 8) < 1e-6,
            lambda: f"log p = {uniform:.2f} nats per image (a uniform "
            f"{'density on [0, 1]' if dequantized else 'probability'}) gave "
            f"{listed(at_uniform)}; the 256 levels of a pixel take log2 256 = 8 bits "
            "when none is more likely than another.")
    report.check("equals (-log p + D ln 256) / (D ln 2) on other inputs" if dequantized
                 else "equals -log P / (D ln 2) on other inputs",
                 close(result, expected, 1e-6),
                 lambda: _bits_hint(result, log_p, expected, dequantized, num_dims))
    return report.finish()
