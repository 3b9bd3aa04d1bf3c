r"""Numbers to report: the test ELBO and an importance-sampled log-likelihood.

The ELBO is only a lower bound on :math:`\log p(x)`. Drawing K codes from
q(z|x) and averaging their importance weights gives a tighter estimate,

.. math::
    \log p(x) \approx \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x),

which is itself a lower bound in expectation (Burda et al., 2016) and tends to
:math:`\log p(x)` as K grows. It is the k-sample bound that an IWAE trains on
(:func:`vae_course.elbo.iwae_bound`), at k = K: both compute their log-weights with
:func:`vae_course.elbo.log_importance_weights`. For a conditional VAE, given the
``labels``, every distribution is conditioned on y and the same average estimates
:math:`\log p(x \mid y)`.

Each image draws its codes from a random stream of its own, seeded by the seed and
the image's place in the data set, so its estimate does not depend on which other
images are evaluated with it, in what order, or how the work is split into chunks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .distributions import check_pixels
from .elbo import check_num_samples, log_importance_weights, mean_terms
from .models import IMAGE_SIZE
from .runtime import map_in_threads
from .train import (
    check_images,
    check_number,
    checked_one_hot,
    fixed_binarization,
    wants_binarization,
)


def _prepared(model, images, binarize, seed):
    seed = check_number("seed", seed, integer=True, allow_zero=True)
    check_images(images, dtype=next(model.parameters()).dtype)
    return fixed_binarization(images, wants_binarization(model, binarize), seed)


@torch.no_grad()
def evaluate_elbo(model, images: torch.Tensor, binarize: bool | None = None,
                  seed: int = 0, batch_size: int = 1000,
                  labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean ELBO terms over ``images`` in nats per image, plus ``negative_elbo``.

    Binarizes (by default, for a Bernoulli likelihood) with the same seeded draw
    as :func:`vae_course.train.fit` uses for its test numbers. A conditional VAE
    needs the ``labels`` of the images (int64, one per image).
    """
    batch_size = check_number("batch_size", batch_size, integer=True)
    images = _prepared(model, images, binarize, seed)
    rows = checked_one_hot(model, labels, images, "labels")  # one-hot rows, or None
    model.eval()
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda"
                               else []):
        torch.manual_seed(seed)
        terms = mean_terms(model, images, batch_size, labels=rows)
    terms["negative_elbo"] = -terms["elbo"]
    return terms


def bits_per_dim(nats, num_dims: int = IMAGE_SIZE):
    r"""A negative log-likelihood in nats per image, as bits per dimension.

    :math:`\text{bits/dim} = \frac{-\log p(x)}{D \ln 2}`: base-2 logarithms
    (1 bit = ln 2 nats), divided by the ``num_dims`` dimensions of an image (784
    pixels for MNIST). Takes a number or a tensor and returns the same kind. Only a
    log-probability of discrete data is a code length; for a log-density it is a
    number without that meaning (lesson 07).
    """
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive integer; got {num_dims!r}")
    return nats / (num_dims * math.log(2))


# Codes decoded per call: enough rows for the matmuls to run at speed, few enough
# that the (rows, 784) logits stay in the CPU's cache for the passes that follow.
ROWS_PER_CALL = 512
# Codes of one group of images, encoded together: the encoder and the small
# per-image steps then run once for several images instead of once for each.
CODES_PER_GROUP = 4096


def image_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of the image at ``index`` in its data set, under ``seed``."""
    # SeedSequence mixes the pair, so nearby (seed, index) pairs give unrelated streams.
    high, low = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))


def _check_index(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}")


@torch.no_grad()
def importance_weighted_log_likelihood(model, images: torch.Tensor,
                                       num_samples: int = 5000,
                                       binarize: bool | None = None, seed: int = 0,
                                       max_pixels: int = 2**24,
                                       progress: bool = False,
                                       first_index: int = 0,
                                       labels: torch.Tensor | None = None
                                       ) -> torch.Tensor:
    """Estimate log p(x) for each image with ``num_samples`` importance samples.

    Image ``i`` of ``images`` is image ``first_index + i`` of its data set, and its
    codes come from :func:`image_generator` for that index: evaluate images 50 to
    149 with ``first_index=50`` and they get the numbers a call on the first 150
    gives them. (Grey images are binarized by one seeded draw over ``images``, the
    draw of :func:`vae_course.train.fixed_binarization`; to evaluate a slice that is
    not the first images, binarize the whole set first and pass the slice.)

    Work is split into calls that decode at most ``max_pixels`` pixels in all, so
    memory stays bounded whatever K is; on the CPU, groups of images run side by
    side, one on each of PyTorch's threads (:func:`vae_course.runtime.map_in_threads`).
    Neither the split nor the threads change the result. Returns a
    (N,) tensor in nats on the CPU. A conditional VAE needs the ``labels`` of the
    images (int64, one per image) and then estimates log p(x|y).
    """
    check_num_samples(num_samples)
    _check_index("seed", seed)
    _check_index("first_index", first_index)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) \
            or max_pixels < IMAGE_SIZE:
        raise ValueError(f"max_pixels must be an integer of at least {IMAGE_SIZE} "
                         f"(one image); got {max_pixels!r}")
    images = _prepared(model, images, binarize, seed)
    check_pixels(images, model.likelihood)
    rows = checked_one_hot(model, labels, images, "labels")  # one-hot rows, or None
    model.eval()
    max_rows = max_pixels // IMAGE_SIZE
    rows_per_call = min(max_rows, ROWS_PER_CALL)
    # Whole images per group, as many as CODES_PER_GROUP codes hold (at least one);
    # their codes are decoded rows_per_call at a time, and never more than max_rows.
    images_per_group = max(1, min(max_rows, CODES_PER_GROUP) // num_samples)
    starts = range(0, len(images), images_per_group)

    def estimate(start):  # log p(x) of one group's images: (group,)
        x = images[start:start + images_per_group]  # (group, 784)
        indices = range(first_index + start, first_index + start + len(x))
        group_rows = None if rows is None else rows[start:start + images_per_group]
        log_weights = _log_weights(model, x, indices, num_samples, seed,
                                   rows_per_call, group_rows)  # (group, num_samples)
        return torch.logsumexp(log_weights, 1).cpu() - math.log(num_samples)

    # Groups side by side: the estimator's many small steps keep one core each busy
    # better than each step split over the cores. Each thread decodes at most
    # rows_per_call codes at a time, so together never more than max_rows.
    threads = 1 if model.device.type != "cpu" else \
        min(torch.get_num_threads(), max(1, max_rows // rows_per_call))
    estimates = map_in_threads(estimate, starts, threads)
    if progress:
        from tqdm.auto import tqdm
        estimates = tqdm(estimates, total=len(starts), unit="group",
                         desc=f"log p(x), K={num_samples}")
    return torch.cat(list(estimates))


def _log_weights(model, x, indices, num_samples, seed, rows_per_call, label_rows=None):
    """log p(x|z) + log p(z) - log q(z|x) for each image's K codes: (group, K).

    With the one-hot ``label_rows`` (group, classes) of a conditional VAE, every
    distribution is also given y: log p(x|z,y) + log p(z) - log q(z|x,y).
    """
    device = model.device
    x = x.to(device)
    noise = torch.stack([
        torch.randn(num_samples, model.latent_dim, generator=image_generator(seed, i))
        for i in indices]).to(device)  # (group, K, latent_dim)
    return log_importance_weights(model, x, noise, rows_per_call, label_rows)


# Burda et al. (2016) call a latent unit active when its activity exceeds this.
ACTIVE_THRESHOLD = 1e-2


def unit_activity(means: torch.Tensor) -> torch.Tensor:
    r"""Burda et al.'s activity of each unit: :math:`A_d = \mathrm{Cov}_x(E_q[z_d])`.

    ``means`` holds the posterior mean of every image, (num_images, latent_dim), as
    :func:`vae_course.plots.latent_means` returns them; the result is the variance
    over images of each column (with Bessel's correction), (latent_dim,). It is
    computed in float64 so that a unit near the threshold is counted the same way
    on every CPU.
    """
    if means.dim() != 2 or len(means) < 2:
        raise ValueError("means must have shape (num_images, latent_dim) with at least "
                         f"two images; got {tuple(means.shape)}")
    return means.double().var(dim=0)


def active_units(means: torch.Tensor,
                 threshold: float = ACTIVE_THRESHOLD) -> torch.Tensor:
    """Which latent units are active: ``unit_activity(means) > threshold``.

    Returns a (latent_dim,) boolean tensor; ``.sum()`` of it is the number of active
    units that Burda et al. report.
    """
    return unit_activity(means) > threshold
