"""Encoder, decoder and the VAE module that ties them to the three distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .distributions import (
    LIKELIHOODS,
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


def conv_decoder(latent_dim: int, channels: int = 32) -> nn.Sequential:
    """(batch, latent_dim) -> (batch, 784) logits, mirroring :func:`conv_encoder`."""
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * channels * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (2 * channels, 7, 7)),
        nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),  # 14 x 14
        nn.ReLU(),
        nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),  # (batch, 1, 28, 28)
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
        logits = self.decoder(z.reshape(-1, self.latent_dim))  # (n, 784)
        logits = logits.reshape(*leading, IMAGE_SIZE)  # (..., 784)
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
    """The course's VAE; the default is the MLP 784-100-100-64 / 32-100-100-784."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                         f"{ARCHITECTURES}")
    for name, value in [("latent_dim", latent_dim)] + [
            ("hidden_sizes", size) for size in hidden_sizes]:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must hold positive integers; got {value!r}")
    hidden_sizes = list(hidden_sizes)
    config = {"architecture": architecture, "latent_dim": latent_dim,
              "hidden_sizes": hidden_sizes, "likelihood": likelihood}
    if architecture == "mlp":
        encoder = mlp([IMAGE_SIZE, *hidden_sizes, 2 * latent_dim])
        decoder = mlp([latent_dim, *reversed(hidden_sizes), IMAGE_SIZE])
    else:
        encoder, decoder = conv_encoder(latent_dim), conv_decoder(latent_dim)
    return VAE(encoder, decoder, latent_dim, likelihood, config)


@torch.no_grad()
def init_output_bias(model: VAE, images: torch.Tensor, clip: float = 1e-3) -> VAE:
    """Start the decoder's last bias at the logit of each pixel's mean over ``images``.

    With the weights still small, every code then decodes to the average digit
    instead of grey noise, as in Burda et al.'s code for their VAE and IWAE (which
    clips the means to ``[clip, 1 - clip]`` first, so that no logit is infinite).
    ``images`` are training images, grey or binary, of shape (N, 784).
    """
    if images.dim() != 2 or images.shape[1] != IMAGE_SIZE or len(images) == 0:
        raise ValueError(f"images must have shape (N, {IMAGE_SIZE}) with N > 0; "
                         f"got {tuple(images.shape)}")
    if not 0 < clip < 0.5:
        raise ValueError(f"clip must lie strictly between 0 and 0.5; got {clip!r}")
    last = [layer for layer in model.decoder.modules()
            if isinstance(layer, nn.Linear | nn.ConvTranspose2d)][-1]
    if not isinstance(last, nn.Linear) or last.out_features != IMAGE_SIZE:
        raise ValueError("init_output_bias needs a decoder that ends in a Linear "
                         f"layer with {IMAGE_SIZE} outputs (an MLP decoder)")
    means = images.double().mean(0).clamp(clip, 1 - clip)  # (784,)
    last.bias.copy_(torch.logit(means).to(last.bias))
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
