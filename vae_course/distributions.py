"""The three distributions of a VAE: prior p(z), posterior q(z|x), likelihood p(x|z).

Each is an ``Independent`` distribution, so ``log_prob`` sums over the event
dimensions (the latent units or the 784 pixels) and returns one number per image.
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Independent, Normal

from .data import check_pixel_values

LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


class GreyPixelsError(ValueError):
    """Grey-level pixels were given to a Bernoulli likelihood."""


def standard_normal_prior(latent_dim: int, device=None) -> Independent:
    """p(z) = N(0, I) over ``latent_dim`` units."""
    loc = torch.zeros(latent_dim, device=device)
    return Independent(Normal(loc, torch.ones_like(loc)), 1)


def posterior_from_encoder(encoder_output: torch.Tensor) -> Independent:
    """q(z|x) from an encoder output holding means, then log standard deviations.

    ``encoder_output`` has shape (batch, 2 * latent_dim). The network predicts the
    log of the scale so that any real output gives a positive scale.
    """
    if encoder_output.shape[-1] % 2 != 0:
        raise ValueError(
            "the encoder output must hold a mean and a log-scale per latent unit, "
            f"so its last size must be even; got {tuple(encoder_output.shape)}"
        )
    loc, log_scale = encoder_output.chunk(2, dim=-1)  # (batch, latent_dim) each
    return Independent(Normal(loc, log_scale.exp()), 1)


def check_pixels(x: torch.Tensor, kind: str = "bernoulli") -> None:
    """Refuse pixels the likelihood cannot score, with a message that says why.

    NaN, values outside [0, 1] and non-float tensors are refused for either
    likelihood; grey levels only for the Bernoulli.
    """
    if kind not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {kind!r}; choose one of {LIKELIHOODS}")
    check_pixel_values(x, "pixels")
    if kind == "bernoulli" and bool(((x != 0) & (x != 1)).any()):
        raise GreyPixelsError(
            "a Bernoulli likelihood scores only pixels that are exactly 0 or 1, "
            "but these images have grey levels. Binarize them "
            "(vae_course.data.binarize) or use likelihood='continuous_bernoulli'."
        )


def likelihood_from_logits(logits: torch.Tensor, kind: str = "bernoulli") -> Independent:
    """p(x|z) over all pixels from decoder logits of shape (..., 784)."""
    if kind == "bernoulli":
        return Independent(Bernoulli(logits=logits), 1)
    if kind == "continuous_bernoulli":
        return Independent(ContinuousBernoulli(logits=logits), 1)
    raise ValueError(f"unknown likelihood {kind!r}; choose one of {LIKELIHOODS}")
