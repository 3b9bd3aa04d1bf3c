r"""The inference gaps of a model with two latent units, computed exactly on a grid.

On cells of side :math:`h` centred on codes :math:`z_j` the evidence is
:math:`\log p(x) \approx \operatorname{logsumexp}_j \log p(x, z_j) + \log h^2`, and the
true posterior's probability of cell :math:`j` is :math:`p(x, z_j)\, h^2 / p(x)`.
Cremer, Li and Duvenaud (2018) split what the encoder's ELBO misses into two gaps,

.. math::
    \log p(x) - \mathrm{ELBO}(q_\phi) =
    \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation}}
    + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q_\phi)}_{\text{amortization}},

where :math:`q^*` is the best diagonal Gaussian for the one image
(:func:`optimise_gaussian`). For a posterior of standard deviation :math:`s` the
midpoint rule errs by about :math:`4 e^{-2\pi^2 s^2 / h^2}`; :func:`exact_inference`
sums the fine grid only where a ten times coarser one finds the posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .elbo import LOG_2PI, kl_standard_normal
from .evaluate import log1p_exp_sum
from .inputs import check_number, check_pixels, check_tensor


@dataclass(frozen=True)
class LatentGrid:
    """A square grid of codes on :math:`[-\\text{limit}, \\text{limit}]^2`, cells of side
    ``step``. ``coarse`` cells make a coarse cell, ``tile`` of those a tile, skipped when
    it and its neighbours score over ``threshold`` nats below the image's best."""

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


def codes_of(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Every pair (first[i], second[j]), row by row: (len(first) * len(second), 2)."""
    return torch.cartesian_prod(first, second)


@torch.no_grad()
def log_joint(model, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) of every image (N, pixels) at every code (n, 2): (N, n).
    A Bernoulli decoder's is ``x @ logits.T - softplus(logits).sum(-1)``, one product."""
    return _score(model, images, *_decoded(model, codes, images))


def _decoded(model, codes, images):
    """What scoring needs of the codes, computed once for any number of images."""
    codes = codes.to(device=images.device, dtype=images.dtype)
    log_prior = -0.5 * (codes**2).sum(-1) - LOG_2PI  # (n,), N(0, I) in two dimensions
    if getattr(model, "likelihood", None) == "bernoulli":
        logits = model.decoder(codes)  # (n, 784)
        normalizer = log1p_exp_sum(logits.clone())  # (n,)
        if not bool(torch.isfinite(normalizer).all()):  # e^l overflowed: softplus
            normalizer = F.softplus(logits).sum(-1)
        return logits.T, normalizer - log_prior, None
    return None, -log_prior, codes


def _score(model, images, logits_t, offset, codes):
    if codes is None:
        return images @ logits_t - offset  # (N, n)
    return model.decode(codes).log_prob(images[:, None]) - offset


def _prepared(model, images):
    """``images`` on the model's device, once both are fit for a grid."""
    latent_dim = getattr(model, "latent_dim", None)
    if latent_dim != 2:
        raise ValueError("exact inference on a grid needs a model with exactly two "
                         f"latent units; this one has latent_dim = {latent_dim!r}")
    check_tensor(images, "images")
    if images.dim() != 2:
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

    ``gaussians`` maps names to diagonal Gaussians with batch (N,), such as
    ``model.encode(images)``. Returns float64 CPU tensors ``log_likelihood`` (N,),
    ``posterior_mean`` (N, 2), ``posterior_cov`` (N, 2, 2), ``edge_mass`` (N,) (the
    mass in the border tiles) and ``kl``, a dict of (N,) KL(p(z|x) || q) by name."""
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
    kl = {}
    for name, (loc, scale) in gaussians.items():
        # KL(p || q) = sum_j P_j (log p(x, z_j) - log q(z_j)) - log p(x), P_j = w_j/mass
        log_q = _expected_log_gaussian(mass, sums["first"], sums["second"],
                                       loc.to(mass.device), scale.to(mass.device))
        kl[name] = ((sums["joint"] - log_q) / mass - log_likelihood).cpu()
    return {"log_likelihood": log_likelihood.cpu(), "posterior_mean": mean.cpu(),
            "posterior_cov": cov.cpu(), "edge_mass": (sums["edge"] / mass).cpu(),
            "kl": kl}


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
    """Sums of w_j = p(x, z_j) / e^reference, w_j z_j, w_j z_j z_j^T and w_j log
    p(x, z_j) over each image's kept tiles, each tile decoded once for all images."""
    count, tiles = kept.shape[:2]

    def zeros(*shape):
        return torch.zeros(count, *shape, dtype=torch.float64, device=images.device)

    sums = {"mass": zeros(), "edge": zeros(), "first": zeros(2), "second": zeros(2, 2),
            "joint": zeros()}
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
            squares = (codes[:, :, None] * codes[:, None, :]).flatten(1)  # (n, 4)
            border = row in (0, tiles - 1) or column in (0, tiles - 1)
            for start in range(0, len(users), batch_size):
                who = users[start:start + batch_size]
                joint = _score(model, images[who], *decoded).double()  # (who, n)
                weights = (joint - reference[who][:, None]).exp()  # (who, n)
                total = weights.sum(1)
                sums["mass"][who] += total
                if border:
                    sums["edge"][who] += total
                sums["first"][who] += weights @ codes
                sums["second"][who] += (weights @ squares).unflatten(1, (2, 2))
                sums["joint"][who] += (weights * joint).sum(1)
    return sums


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
    """The true posterior's probability of each cell, for pictures: (N, len(first),
    len(second)) for equally spaced cell centres along z1 and z2, each image's table
    summing to 1. Dense: meant for a few hundred points per axis."""
    images = _prepared(model, images)
    joint = log_joint(model, images, codes_of(first.double(), second.double()))
    probabilities = torch.softmax(joint.double(), dim=1)
    return probabilities.reshape(len(images), len(first), len(second)).cpu()


@torch.no_grad()
def gaussian_elbo(model, images: torch.Tensor, gaussian, num_samples: int = 1000,
                  seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    r"""The ELBO of a diagonal Gaussian q per image: (N,) on the CPU.

    :math:`\mathbb{E}_q[\log p(x \mid z)] - \mathrm{KL}(q \,\|\, p(z))`, the first
    term over ``num_samples`` seeded reparameterized draws, the KL in closed form."""
    check_number("num_samples", num_samples, integer=True)
    images = _prepared(model, images)
    loc, scale = _loc_scale(gaussian, len(images))
    generator = torch.Generator().manual_seed(seed)
    values = []
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

    From ``start`` (such as ``model.encode(images)``) it climbs the images' summed
    ELBOs, ``num_samples`` seeded draws per step, each image's gradient its own. The
    model is unchanged. Returns ``Independent(Normal(loc, scale), 1)``, batch (N,)."""
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
