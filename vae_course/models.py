"""Encoder, decoder and the VAE module that ties them to the three distributions.

:class:`ConditionalVAE` is the same model given the digit's label y too, q(z|x,y) and
p(x|z,y) (Sohn, Lee & Yan 2015; model M2 of Kingma et al. 2014).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import (
    LIKELIHOODS,
    OUTPUTS_PER_PIXEL,
    likelihood_from_logits,
    posterior_from_encoder,
    standard_normal_prior,
)
from .inputs import (
    IMAGE_SIZE,
    check_choice,
    check_count,
    check_images,
    check_labels,
    check_tensor,
)

ARCHITECTURES = ("mlp", "conv")
CONV_CHANNELS = 32  # the conv architecture's width unless build_vae is told another


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them and no activation after the last."""
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"an MLP needs at least two positive sizes; got {list(sizes)}")
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def conv_encoder(latent_dim: int, channels: int = CONV_CHANNELS) -> nn.Sequential:
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


def conv_decoder(latent_dim: int, channels: int = CONV_CHANNELS,
                 outputs_per_pixel: int = 1) -> nn.Sequential:
    """(batch, latent_dim) -> (batch, outputs_per_pixel * 784), mirroring the encoder.
    With two outputs per pixel, the first 784 are one map (locations), then the other."""
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
        check_choice("likelihood", likelihood, LIKELIHOODS)
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.likelihood = latent_dim, likelihood
        self.config = dict(config or {})  # what build_vae needs to rebuild it

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prior(self):
        return standard_normal_prior(self.latent_dim, device=self.device)

    def encode(self, x: torch.Tensor):
        """q(z|x) for a batch of flattened images (batch, 784)."""
        return posterior_from_encoder(self.encoder(x))

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder takes for codes (..., latent_dim): the codes themselves."""
        return z

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's outputs for codes (..., latent_dim): (..., 784) logits, or
        (..., 2 * 784) locations and log-scales for two outputs per pixel."""
        if z.dim() == 2:  # (batch, latent_dim): the layers take it as it is
            return self.decoder(z)
        logits = self.decoder(z.reshape(-1, z.shape[-1]))  # (n, outputs)
        return logits.reshape(*z.shape[:-1], logits.shape[-1])  # (..., outputs)

    def decode(self, z: torch.Tensor):
        """p(x|z) for latent codes of shape (..., latent_dim)."""
        return likelihood_from_logits(self.decode_logits(z), self.likelihood)

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


class ConditionalVAE(VAE):
    """A VAE given the label y too: q(z|x,y), p(x|z,y) and the same prior p(z).

    Each network gets the one-hot label after its input. ``y`` is int64 class indices
    (batch,) or float one-hot rows (batch, num_classes), which may mix classes."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 num_classes: int, likelihood: str = "bernoulli",
                 config: dict | None = None):
        super().__init__(encoder, decoder, latent_dim, likelihood, config)
        self.num_classes = num_classes

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` as float one-hot rows (..., num_classes) of the weights' type."""
        dtype = next(self.parameters()).dtype
        check_tensor(y, "labels")
        if y.is_floating_point():
            if y.dim() == 0 or y.shape[-1] != self.num_classes:
                raise ValueError(
                    f"a float y is read as one-hot rows of {self.num_classes} classes, "
                    f"but it has shape {tuple(y.shape)}; pass int64 class indices "
                    f"(labels.long()), or one-hot rows F.one_hot(labels, "
                    f"{self.num_classes}).float()")
            return y.to(dtype)
        if y.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices; got {y.dtype}")
        check_labels(y.reshape(-1), y.numel(), self.num_classes)  # in 0..classes - 1
        return F.one_hot(y, self.num_classes).to(dtype)

    def _with_label(self, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``inputs`` (..., d), the one-hot of ``y`` after them: (..., d + classes).
        Leading shapes broadcast: labels (batch,) serve inputs (samples, batch, d)."""
        condition = self.one_hot(y)  # (..., num_classes)
        try:
            condition = condition.expand(*inputs.shape[:-1], self.num_classes)
        except RuntimeError:
            raise ValueError(f"labels of shape {tuple(y.shape)} do not fit inputs of "
                             f"shape {tuple(inputs.shape)}: give one int64 label "
                             "per image, or one float one-hot row per image"
                             ) from None
        return torch.cat([inputs, condition], dim=-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor):
        """q(z|x,y) for images (batch, 784) and their labels."""
        return posterior_from_encoder(self.encoder(self._with_label(x, y)))

    decoder_input = _with_label  # what the decoder takes: each code, then its label

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z,y) for codes (..., latent_dim): (..., 784)."""
        return super().decode_logits(self.decoder_input(z, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor):
        """p(x|z,y) for codes (..., latent_dim) and labels."""
        return likelihood_from_logits(self.decode_logits(z, y), self.likelihood)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        posterior = self.encode(x, y)
        z = posterior.rsample()  # (batch, latent_dim), differentiable
        return posterior, z, self.decode(z, y)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Pixel means of p(x|z,y) for one prior code per label: (len(labels), 784)."""
        z = torch.randn(len(labels), self.latent_dim, generator=generator,
                        device="cpu" if generator is not None else self.device)
        return self.decode(z.to(self.device), labels.to(self.device)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor):
        """Pixel means of p(x|z,y) at the mean of q(z|x,y): (batch, 784)."""
        return self.decode(self.encode(x, y).mean, y).mean


def is_conditional(model) -> bool:
    """Whether ``model`` needs the labels (a :class:`ConditionalVAE`)."""
    return isinstance(model, ConditionalVAE)


def label_arguments(model, labels: torch.Tensor | None) -> tuple:
    """``(labels,)`` for a conditional model, ``()`` for a plain one, so that
    ``model.encode(x, *label_arguments(model, labels))`` works for both."""
    if is_conditional(model) and labels is None:
        raise ValueError("this conditional VAE needs the label of every image: "
                         "pass labels")
    if not is_conditional(model) and labels is not None:
        raise ValueError("labels were given, but this VAE is not conditional "
                         "(build_vae(num_classes=10) builds one that is)")
    return () if labels is None else (labels,)


def checked_one_hot(model, labels, images, name: str) -> torch.Tensor | None:
    """The one-hot rows of ``labels`` on the model's device, checked once; or None.
    Labels are needed exactly when the model is conditional and there are images."""
    if images is None or not is_conditional(model):
        if labels is not None:
            why = ("without the images they label" if images is None else
                   "but this VAE is not conditional (build_vae(num_classes=10) "
                   "builds one that is)")
            raise ValueError(f"{name} were given {why}")
        return None
    if labels is None:
        raise ValueError(f"this conditional VAE needs {name}, the label of every image")
    check_labels(labels, len(images), model.num_classes, name)
    return model.one_hot(labels.to(model.device))  # (N, num_classes)


def build_vae(architecture: str = "mlp", latent_dim: int = 32,
              hidden_sizes: Sequence[int] = (100, 100),
              likelihood: str = "bernoulli", num_classes: int | None = None,
              channels: int | None = None) -> VAE:
    """The course's VAE; the default is the MLP 784-100-100-64 / 32-100-100-784.

    ``likelihood="discretized_logistic"`` gives two outputs per pixel (32-100-100-1568),
    ``num_classes=10`` a :class:`ConditionalVAE`; ``channels`` is the conv architecture's
    width (then doubled), 32 unless given, as in a config saved without it."""
    check_choice("architecture", architecture, ARCHITECTURES)
    if architecture == "mlp" and channels is not None:
        raise ValueError(f"channels={channels!r} sets the width of the conv "
                         "architecture; the MLP's widths are its hidden_sizes")
    check_count("latent_dim", latent_dim)
    if architecture == "conv":
        channels = CONV_CHANNELS if channels is None else channels
        check_count("channels", channels)
    for size in hidden_sizes:
        check_count("hidden_sizes", size)
    check_choice("likelihood", likelihood, LIKELIHOODS)
    hidden_sizes = list(hidden_sizes)
    outputs = OUTPUTS_PER_PIXEL[likelihood]
    config = {"architecture": architecture, "latent_dim": latent_dim,
              "hidden_sizes": hidden_sizes, "likelihood": likelihood}
    if architecture == "conv":
        config["channels"] = channels
    if num_classes is not None:
        if architecture != "mlp":
            raise ValueError("the conditional VAE is an MLP; got architecture "
                             f"{architecture!r}")
        check_count("num_classes", num_classes, minimum=2)
        config["num_classes"] = num_classes
    label_inputs = num_classes or 0  # a conditional VAE's one-hot label, per network
    if architecture == "mlp":
        encoder = mlp([IMAGE_SIZE + label_inputs, *hidden_sizes, 2 * latent_dim])
        decoder = mlp([latent_dim + label_inputs, *reversed(hidden_sizes),
                       outputs * IMAGE_SIZE])
    else:
        encoder = conv_encoder(latent_dim, channels)
        decoder = conv_decoder(latent_dim, channels, outputs_per_pixel=outputs)
    if num_classes is None:
        return VAE(encoder, decoder, latent_dim, likelihood, config)
    return ConditionalVAE(encoder, decoder, latent_dim, num_classes, likelihood, config)


@torch.no_grad()
def init_output_bias(model: VAE, images: torch.Tensor, clip: float = 1e-3) -> VAE:
    """Start the decoder's last bias at the logit of each pixel's mean over ``images``
    (N, 784), so that every code first decodes to the average digit, not grey noise.

    As in Burda et al.'s code, the means are clipped to ``[clip, 1 - clip]`` so that
    no logit is infinite."""
    check_images(images, dtype=images.dtype)  # grey or binary, of any float type
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
