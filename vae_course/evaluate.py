r"""Numbers to report: the test ELBO and an importance-sampled log-likelihood.

The ELBO is only a lower bound on :math:`\log p(x)`. Drawing K codes from
q(z|x) and averaging their importance weights gives a tighter estimate,

.. math::
    \log p(x) \approx \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x),

which is itself a lower bound in expectation (Burda et al., 2015) and tends to
:math:`\log p(x)` as K grows.
"""

from __future__ import annotations

import math

import torch

from .distributions import check_pixels
from .elbo import mean_terms
from .train import check_images, fixed_test_images, wants_binarization


def _prepared(model, images, binarize, seed):
    check_images(images)
    return fixed_test_images(images, wants_binarization(model, binarize), seed)


@torch.no_grad()
def evaluate_elbo(model, images: torch.Tensor, binarize: bool | None = None,
                  seed: int = 0, batch_size: int = 1000) -> dict[str, float]:
    """Mean ELBO terms over ``images`` in nats per image, plus ``negative_elbo``.

    Binarizes (by default, for a Bernoulli likelihood) with the same seeded draw
    as :func:`vae_course.train.fit` uses for its test numbers.
    """
    images = _prepared(model, images, binarize, seed)
    model.eval()
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda"
                               else []):
        torch.manual_seed(seed)
        terms = mean_terms(model, images, batch_size)
    terms["negative_elbo"] = -terms["elbo"]
    return terms


@torch.no_grad()
def importance_weighted_log_likelihood(model, images: torch.Tensor,
                                       num_samples: int = 5000,
                                       binarize: bool | None = None, seed: int = 0,
                                       max_pixels: int = 2**24,
                                       progress: bool = False) -> torch.Tensor:
    """Estimate log p(x) for each image with ``num_samples`` importance samples.

    Work is split into chunks of at most ``max_pixels`` decoded pixels (64 MiB of
    float32 logits by default), so memory stays bounded whatever K is. Returns a
    (N,) tensor in nats on the CPU.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    images = _prepared(model, images, binarize, seed)
    check_pixels(images, model.likelihood)
    model.eval()
    device = model.device
    images_per_chunk = max(1, min(len(images), max_pixels // (784 * num_samples)))
    samples_per_chunk = max(1, min(num_samples, max_pixels // (784 * images_per_chunk)))
    estimates = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        starts = range(0, len(images), images_per_chunk)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f"log p(x), K={num_samples}", unit="chunk")
        for start in starts:
            x = images[start:start + images_per_chunk].to(device)  # (batch, 784)
            posterior, prior = model.encode(x), model.prior()
            log_weights = []
            for done in range(0, num_samples, samples_per_chunk):
                count = min(samples_per_chunk, num_samples - done)
                z = posterior.sample((count,))  # (count, batch, latent_dim)
                log_weights.append(model.decode(z).log_prob(x) + prior.log_prob(z)
                                   - posterior.log_prob(z))  # (count, batch)
            log_weights = torch.cat(log_weights)  # (num_samples, batch)
            estimates.append(torch.logsumexp(log_weights, 0).cpu()
                             - math.log(num_samples))
    return torch.cat(estimates)


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
