"""Encoder, decoder and the VAE module that ties them to the three distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .distributions import (
    LIKELIHOODS,
    OUTPUTS_PER_PIXEL,
    likelihood_from_logits,
    posterior_from_encoder,
    standard_normal_prior,
)

IMAGE_SIZE = 28 * 28
ARCHITECTURES = ("mlp", "conv")


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them and no activation after the last."""
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"an MLP needs at least two positive sizes; got {list(sizes)}")
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def conv_encoder(latent_dim: int, channels: int = 32) -> nn.Sequential:
    """(batch, 784) -> (batch, 2 * latent_dim) through two strided convolutions."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, channels, 4, stride=2, padding=1),  # (batch, c, 14, 14)
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),  # (batch, 2c, 7, 7)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * channels * 7 * 7, 2 * latent_dim),
    )


def conv_decoder(latent_dim: int, channels: int = 32,
                 outputs_per_pixel: int = 1) -> nn.Sequential:
    """(batch, latent_dim) -> (batch, outputs_per_pixel * 784), mirroring the encoder.

    With more than one output per pixel, the first 784 outputs are the first map
    (e.g. the locations), the next 784 the second (the log-scales).
    """
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * channels * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (2 * channels, 7, 7)),
        nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # 14 x 14
        nn.ReLU(),
        nn.ConvTranspose2d(channels, outputs_per_pixel, 4, stride=2,
                           padding=1),  # (batch, outputs_per_pixel, 28, 28)
        nn.Flatten(),
    )


class VAE(nn.Module):
    """An encoder giving q(z|x), a decoder giving p(x|z), and the prior p(z)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 likelihood: str = "bernoulli", config: dict | None = None):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; "
                             f"choose one of {LIKELIHOODS}")
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        # What build_vae needs to rebuild this model; checkpoints store it.
        self.config = dict(config or {})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prior(self):
        return standard_normal_prior(self.latent_dim, device=self.device)

    def encode(self, x: torch.Tensor):
        """q(z|x) for a batch of flattened images (batch, 784)."""
        return posterior_from_encoder(self.encoder(x))

    def decode(self, z: torch.Tensor):
        """p(x|z) for latent codes of shape (..., latent_dim)."""
        leading = z.shape[:-1]
        # (n, 784) logits, or (n, 2 * 784) locations and log-scales
        logits = self.decoder(z.reshape(-1, self.latent_dim))
        logits = logits.reshape(*leading, logits.shape[-1])  # (..., outputs)
        return likelihood_from_logits(logits, self.likelihood)

    def forward(self, x: torch.Tensor):
        posterior = self.encode(x)
        z = posterior.rsample()  # (batch, latent_dim), differentiable
        return posterior, z, self.decode(z)

    @torch.no_grad()
    def sample(self, num_images: int, generator: torch.Generator | None = None):
        """Pixel means of p(x|z) for z drawn from the prior: (num_images, 784)."""
        z = torch.randn(num_images, self.latent_dim, generator=generator,
                        device="cpu" if generator is not None else self.device)
        return self.decode(z.to(self.device)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor):
        """Pixel means of p(x|z) at the posterior mean of each image: (batch, 784)."""
        return self.decode(self.encode(x).mean).mean


def build_vae(architecture: str = "mlp", latent_dim: int = 32,
              hidden_sizes: Sequence[int] = (100, 100),
              likelihood: str = "bernoulli") -> VAE:
    """The course's VAE; the default is the MLP 784-100-100-64 / 32-100-100-784.

    The decoder has one output per pixel for the Bernoulli likelihoods and two for
    ``likelihood="discretized_logistic"`` (32-100-100-1568).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                         f"{ARCHITECTURES}")
    for name, value in [("latent_dim", latent_dim)] + [
            ("hidden_sizes", size) for size in hidden_sizes]:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must hold positive integers; got {value!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; "
                         f"choose one of {LIKELIHOODS}")
    hidden_sizes = list(hidden_sizes)
    outputs = OUTPUTS_PER_PIXEL[likelihood]
    config = {"architecture": architecture, "latent_dim": latent_dim,
              "hidden_sizes": hidden_sizes, "likelihood": likelihood}
    if architecture == "mlp":
        encoder = mlp([IMAGE_SIZE, *hidden_sizes, 2 * latent_dim])
        decoder = mlp([latent_dim, *reversed(hidden_sizes), outputs * IMAGE_SIZE])
    else:
        encoder = conv_encoder(latent_dim)
        decoder = conv_decoder(latent_dim, outputs_per_pixel=outputs)
    return VAE(encoder, decoder, latent_dim, likelihood, config)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
