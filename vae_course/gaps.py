r"""The inference gaps of a model with two latent units, computed exactly.

With two latent units the evidence is a two-dimensional integral, and a grid of
codes computes it: with cells of side :math:`h` centred on the codes :math:`z_j`,

.. math::
    \log p(x) = \log \int p(x \mid z)\, p(z)\, dz
    \approx \operatorname{logsumexp}_j \big(\log p(x \mid z_j) + \log p(z_j)\big)
        + \log h^2 ,

and the true posterior's probability of cell :math:`j` is
:math:`p(x, z_j)\, h^2 / p(x)`. Against these, Cremer, Li and Duvenaud (2018) split
what the ELBO of the encoder's :math:`q_\phi` misses into two gaps,

.. math::
    \log p(x) - \mathrm{ELBO}(q_\phi) =
    \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation}}
    + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\phi)}_{\text{amortization}},

where :math:`q^*` is the best diagonal Gaussian for this one image, found here by
optimising its mean and log-variance (:func:`optimise_gaussian`).

The grid's error. The sum is the midpoint rule, whose error for a smooth integrand
falls faster than any power of :math:`h` once the cells are narrower than the
posterior (for a Gaussian of standard deviation :math:`s` the relative error is
about :math:`4 e^{-2\pi^2 s^2 / h^2}`: :math:`10^{-8}` at :math:`h = s`), and whose
truncation error is the mass outside the grid. :class:`LatentGrid` defaults to
cells of 0.01 on :math:`[-6, 6]^2`; ``edge_mass`` reports the posterior mass in the
grid's border tiles, so a posterior near the edge shows. The tests check the rule
against a linear-Gaussian model, whose evidence and posterior are known in closed
form, and check that halving :math:`h` moves log p(x) by less than 0.001 nats.

The fine grid has 1200 x 1200 codes. Each image's posterior fills a small part of
it, so :func:`exact_inference` first scores a coarse grid (cells ten times wider),
keeps for each image the tiles of the fine grid within ``threshold`` nats of its
best coarse score and their neighbours, and sums the fine grid over those tiles
only. Every tile is decoded once, for all the images that need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .elbo import LOG_2PI, kl_standard_normal
from .evaluate import log1p_exp_sum
from .inputs import check_number, check_pixels


@dataclass(frozen=True)
class LatentGrid:
    """A square grid of codes on :math:`[-\\text{limit}, \\text{limit}]^2`.

    ``step`` is the side of a fine cell; ``coarse`` fine cells make a coarse cell
    and ``tile`` coarse cells the side of a tile. A tile is skipped for an image
    when its best coarse score is more than ``threshold`` nats below the image's
    best, and none of its eight neighbours is kept.
    """

    limit: float = 6.0
    step: float = 0.01
    coarse: int = 10
    tile: int = 2
    threshold: float = 30.0

    def __post_init__(self):
        check_number("limit", self.limit)
        check_number("step", self.step)
        check_number("coarse", self.coarse, integer=True)
        check_number("tile", self.tile, integer=True)
        check_number("threshold", self.threshold)
        cells = 2 * self.limit / self.step
        if abs(cells - round(cells)) > 1e-6 or round(cells) % (self.coarse * self.tile):
            raise ValueError(
                f"2 * limit / step = {cells:g} fine cells per axis must be a whole "
                f"multiple of coarse * tile = {self.coarse * self.tile}")

    @property
    def cells_per_axis(self) -> int:
        return round(2 * self.limit / self.step)

    @property
    def log_cell_area(self) -> float:
        return 2 * math.log(self.step)

    def axis(self, step: float | None = None) -> torch.Tensor:
        """The cell centres along one axis, for cells of side ``step``: (n,)."""
        step = self.step if step is None else step
        cells = round(2 * self.limit / step)
        return -self.limit + step * (torch.arange(cells, dtype=torch.float64) + 0.5)


def check_two_latent_units(model) -> None:
    if getattr(model, "latent_dim", None) != 2:
        raise ValueError("exact inference on a grid needs a model with exactly two "
                         f"latent units; this one has latent_dim = "
                         f"{getattr(model, 'latent_dim', None)!r}")


def codes_of(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Every pair (first[i], second[j]), row by row: (len(first) * len(second), 2)."""
    return torch.cartesian_prod(first, second)


@torch.no_grad()
def log_joint(model, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) of every image at every code: (N, n).

    ``codes`` is (n, 2). A Bernoulli decoder is scored as one matrix product,
    ``x @ logits.T - softplus(logits).sum(-1)``; any other model through its
    ``decode(z).log_prob(x)``.
    """
    return _score(model, images, *_decoded(model, codes, images))


def _decoded(model, codes, images):
    """What scoring needs of the codes, computed once for any number of images."""
    codes = codes.to(device=images.device, dtype=images.dtype)
    log_prior = -0.5 * (codes**2).sum(-1) - LOG_2PI  # (n,), N(0, I) in two dimensions
    if getattr(model, "likelihood", None) == "bernoulli":
        logits = model.decoder(codes)  # (n, 784)
        # redone with softplus where e^l overflows
        normalizer = log1p_exp_sum(logits.clone())  # (n,)
        if not bool(torch.isfinite(normalizer).all()):
            normalizer = F.softplus(logits).sum(-1)
        return logits.T, normalizer - log_prior, None
    return None, -log_prior, codes


def _score(model, images, logits_t, offset, codes):
    if codes is None:
        return images @ logits_t - offset  # (N, n)
    return model.decode(codes).log_prob(images[:, None]) - offset


def _prepared(model, images):
    check_two_latent_units(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 2:
        raise ValueError("images must be a (N, pixels) tensor")
    if getattr(model, "likelihood", None) in ("bernoulli", "continuous_bernoulli"):
        check_pixels(images, model.likelihood)
    return images.to(next(model.parameters()).device)


def _loc_scale(gaussian, count):
    normal = getattr(gaussian, "base_dist", gaussian)
    loc, scale = normal.loc.detach(), normal.scale.detach()
    if loc.shape != (count, 2) or scale.shape != (count, 2):
        raise ValueError(f"each Gaussian needs a mean and a scale of shape ({count}, 2),"
                         f" one per image; got {tuple(loc.shape)}, {tuple(scale.shape)}")
    return loc, scale


@torch.no_grad()
def exact_inference(model, images: torch.Tensor, gaussians: dict | None = None,
                    grid: LatentGrid | None = None, batch_size: int = 1000) -> dict:
    r"""log p(x), the posterior's moments and KL(posterior || q), on a grid.

    ``gaussians`` maps names to diagonal Gaussians over the images, each an
    ``Independent(Normal(loc, scale), 1)`` with batch (N,) such as
    ``model.encode(images)`` or :func:`optimise_gaussian`'s result. Returns a dict
    of float64 CPU tensors: ``log_likelihood`` (N,), ``posterior_mean`` (N, 2),
    ``posterior_cov`` (N, 2, 2), ``edge_mass`` (N,), the posterior mass in the
    grid's border tiles, and ``kl``, a dict of (N,) tensors
    :math:`\mathrm{KL}(p(z \mid x) \,\|\, q)`, one per Gaussian. Images are
    scored ``batch_size`` at a time.
    """
    grid = LatentGrid() if grid is None else grid
    batch_size = check_number("batch_size", batch_size, integer=True)
    images = _prepared(model, images)
    gaussians = {name: [t.double() for t in _loc_scale(q, len(images))]
                 for name, q in (gaussians or {}).items()}
    kept, reference = zip(*[_kept_tiles(model, images[start:start + batch_size], grid)
                            for start in range(0, len(images), batch_size)],
                            strict=True)
    kept, reference = torch.cat(kept), torch.cat(reference)
    sums = _tile_sums(model, images, grid, kept, reference, batch_size)
    mass = sums["mass"]
    log_likelihood = reference + mass.log() + grid.log_cell_area
    mean = sums["first"] / mass[:, None]
    cov = sums["second"] / mass[:, None, None] - mean[:, :, None] * mean[:, None, :]
    # KL(p || q) = sum_j P_j (log p(x, z_j) - log p(x) - log q(z_j)), P_j = w_j / mass
    kl = {name: (sums["joint"] - _expected_log_gaussian(
        mass, sums["first"], sums["second"], loc.to(mass.device), scale.to(mass.device))
    ) / mass - log_likelihood for name, (loc, scale) in gaussians.items()}
    return {"log_likelihood": log_likelihood.cpu(), "posterior_mean": mean.cpu(),
            "posterior_cov": cov.cpu(), "edge_mass": (sums["edge"] / mass).cpu(),
            "kl": {name: value.cpu() for name, value in kl.items()}}


def _kept_tiles(model, images, grid):
    """Which tiles each image needs, and its best coarse score: (N, T, T), (N,)."""
    coarse_axis = grid.axis(grid.step * grid.coarse)
    scores = log_joint(model, images, codes_of(coarse_axis, coarse_axis))
    tiles = len(coarse_axis) // grid.tile
    scores = scores.reshape(len(images), tiles, grid.tile, tiles, grid.tile)
    best_in_tile = scores.amax(dim=(2, 4))  # (N, tiles, tiles)
    best = best_in_tile.flatten(1).max(1).values  # (N,)
    kept = best_in_tile >= best[:, None, None] - grid.threshold
    # ... and their eight neighbours, for mass that the coarse points miss.
    kept = F.max_pool2d(kept[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    return kept, best.double()


def _tile_sums(model, images, grid, kept, reference, batch_size):
    """Sums of w_j = p(x, z_j) / e^reference over each image's kept tiles."""
    count, tiles = kept.shape[:2]
    zeros = torch.zeros(count, dtype=torch.float64, device=images.device)
    sums = {"mass": zeros, "edge": zeros.clone(),
            "first": torch.zeros(count, 2, dtype=torch.float64, device=images.device),
            "second": torch.zeros(count, 2, 2, dtype=torch.float64,
                                  device=images.device),
            "joint": zeros.clone()}
    fine_axis, per_tile = grid.axis(), grid.coarse * grid.tile
    for row in range(tiles):
        for column in range(tiles):
            users = kept[:, row, column].nonzero()[:, 0]
            if len(users) == 0:
                continue
            codes = codes_of(fine_axis[row * per_tile:(row + 1) * per_tile],
                             fine_axis[column * per_tile:(column + 1) * per_tile])
            decoded = _decoded(model, codes, images)  # once for every image
            codes = codes.to(images.device)
            border = row in (0, tiles - 1) or column in (0, tiles - 1)
            for start in range(0, len(users), batch_size):
                who = users[start:start + batch_size]
                joint = _score(model, images[who], *decoded).double()  # (who, n)
                _add(sums, who, joint, reference[who], codes, border)
    return sums


def _add(sums, who, joint, reference, codes, border):
    weights = (joint - reference[:, None]).exp()  # (who, n)
    total = weights.sum(1)
    sums["mass"][who] += total
    if border:
        sums["edge"][who] += total
    sums["first"][who] += weights @ codes
    sums["second"][who] += (weights @ (codes[:, :, None] * codes[:, None, :]).flatten(1)
                            ).unflatten(1, (2, 2))
    sums["joint"][who] += (weights * joint).sum(1)


def _expected_log_gaussian(mass, first, second, loc, scale):
    """sum_j w_j log q(z_j) from the sums of w, w z and w z z^T: (N,)."""
    precision = scale**-2  # (N, 2)
    squares = second.diagonal(dim1=1, dim2=2)  # sum_j w_j z_j^2: (N, 2)
    quadratic = (precision * (squares - 2 * loc * first + loc**2 * mass[:, None])).sum(1)
    return -0.5 * quadratic - (scale.log().sum(1) + LOG_2PI) * mass


def exact_log_likelihood(model, images: torch.Tensor,
                         grid: LatentGrid | None = None) -> torch.Tensor:
    """log p(x) of each image by quadrature on ``grid``: (N,) float64 on the CPU."""
    return exact_inference(model, images, grid=grid)["log_likelihood"]


@torch.no_grad()
def posterior_on_grid(model, images: torch.Tensor, first: torch.Tensor,
                      second: torch.Tensor) -> torch.Tensor:
    """The true posterior's probability of each cell of a grid, for pictures.

    ``first`` and ``second`` are equally spaced cell centres along z1 and z2; the
    result is (N, len(first), len(second)), each image's table summing to 1 (the
    posterior restricted to the grid). Dense: meant for a window of a few hundred
    points per axis around the posterior.
    """
    images = _prepared(model, images)
    joint = log_joint(model, images, codes_of(first.double(), second.double()))
    probabilities = torch.softmax(joint.double(), dim=1)
    return probabilities.reshape(len(images), len(first), len(second)).cpu()


def gaussian_elbo(model, images: torch.Tensor, gaussian, num_samples: int = 1000,
                  seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    r"""The ELBO of a diagonal Gaussian q per image, estimated with seeded draws.

    :math:`\mathbb{E}_q[\log p(x \mid z)] - \mathrm{KL}(q \,\|\, p(z))`, the first
    term averaged over ``num_samples`` reparameterized draws, the KL in closed form.
    Returns (N,) on the CPU.
    """
    check_number("num_samples", num_samples, integer=True)
    images = _prepared(model, images)
    loc, scale = _loc_scale(gaussian, len(images))
    generator = torch.Generator().manual_seed(seed)
    values = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = slice(start, start + batch_size)
            noise = torch.randn(num_samples, len(images[chunk]), 2, generator=generator)
            values.append(_elbo(model, images[chunk], loc[chunk], scale[chunk],
                                noise.to(images.device)).cpu())
    return torch.cat(values)


def _elbo(model, x, loc, scale, noise):
    """Monte Carlo ELBO of N(loc, scale^2) for each image of x: (N,)."""
    z = loc + scale * noise  # (S, N, 2), as rsample draws it
    reconstruction = model.decode(z).log_prob(x).mean(0)  # (N,)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    return reconstruction - kl_standard_normal(q)


def optimise_gaussian(model, images: torch.Tensor, start, num_steps: int = 300,
                      learning_rate: float = 0.01, num_samples: int = 4,
                      seed: int = 0):
    r"""The best diagonal Gaussian per image: Adam on its mean and log-variance.

    Starts from ``start`` (a Gaussian per image, such as ``model.encode(images)``)
    and climbs each image's ELBO, estimated with ``num_samples`` reparameterized
    draws per step from a seeded stream, with a rate that falls linearly from
    ``learning_rate`` to 0. The loss is the sum of the images'
    negative ELBOs, so each image's gradient is its own. The model's weights are
    not changed. Returns ``Independent(Normal(loc, scale), 1)`` with batch (N,).
    """
    check_number("num_steps", num_steps, integer=True, allow_zero=True)
    check_number("learning_rate", learning_rate)
    check_number("num_samples", num_samples, integer=True)
    images = _prepared(model, images)
    loc, scale = _loc_scale(start, len(images))
    loc = loc.clone().requires_grad_(True)
    log_var = (2 * scale.log()).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_var], lr=learning_rate)
    # The rate falls linearly to 0, so the last steps settle instead of jittering.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1 - step / max(num_steps, 1))
    generator = torch.Generator().manual_seed(seed)
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        for _ in range(num_steps):
            noise = torch.randn(num_samples, len(images), 2, generator=generator)
            loss = -_elbo(model, images, loc, (0.5 * log_var).exp(),
                          noise.to(images.device)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        for parameter, flag in zip(model.parameters(), frozen, strict=True):
            parameter.requires_grad_(flag)
    normal = torch.distributions.Normal(loc.detach(), (0.5 * log_var.detach()).exp())
    return torch.distributions.Independent(normal, 1)
