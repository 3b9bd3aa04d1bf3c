"""Encoder, decoder and the VAE module that ties them to the three distributions.

:class:`ConditionalVAE` is the same model given the digit's label as well: its
encoder gives q(z|x,y) and its decoder p(x|z,y), each fed the one-hot label beside
its usual input (Sohn, Lee & Yan 2015; model M2 of Kingma et al. 2014).
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
from .inputs import IMAGE_SIZE, check_choice, check_count, check_labels

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
        check_choice("likelihood", likelihood, LIKELIHOODS)
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

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder takes for codes (..., latent_dim): the codes themselves."""
        return z

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's outputs for latent codes (..., latent_dim): (..., 784)
        logits, or (..., 2 * 784) locations and log-scales for two per pixel."""
        if z.dim() == 2:  # (batch, latent_dim): the layers take it as it is
            return self.decoder(z)
        leading = z.shape[:-1]
        logits = self.decoder(z.reshape(-1, z.shape[-1]))  # (n, outputs)
        return logits.reshape(*leading, logits.shape[-1])  # (..., outputs)

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

    Each network gets the one-hot label concatenated to its input, so the encoder
    takes 784 + num_classes numbers and the decoder latent_dim + num_classes.
    ``y`` is either int64 class indices, one per image (shape (batch,)), or float
    one-hot rows (batch, num_classes), which may also be mixtures of classes.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 num_classes: int, likelihood: str = "bernoulli",
                 config: dict | None = None):
        super().__init__(encoder, decoder, latent_dim, likelihood, config)
        self.num_classes = num_classes

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` as float one-hot rows (..., num_classes) of the weights' type."""
        dtype = next(self.parameters()).dtype
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor; got {type(y).__name__}")
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
        if y.numel() and bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}; found "
                             f"{int(y.min())}..{int(y.max())}")
        return F.one_hot(y, self.num_classes).to(dtype)

    def _with_label(self, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``inputs`` (..., d), the one-hot of ``y`` after them: (..., d + classes)."""
        condition = self.one_hot(y)  # (..., num_classes)
        leading = inputs.shape[:-1]
        try:
            condition = condition.expand(*leading, self.num_classes)
        except RuntimeError:
            raise ValueError(f"labels of shape {tuple(y.shape)} do not fit inputs of "
                             f"shape {tuple(inputs.shape)}: give one int64 label "
                             "per image, or one float one-hot row per image"
                             ) from None
        return torch.cat([inputs, condition], dim=-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor):
        """q(z|x,y) for images (batch, 784) and their labels."""
        return posterior_from_encoder(self.encoder(self._with_label(x, y)))

    def decoder_input(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the decoder takes for codes (..., latent_dim): each code, then the
        one-hot of its label, (..., latent_dim + num_classes)."""
        return self._with_label(z, y)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z,y) for codes (..., latent_dim): (..., 784).

        The leading shape of ``y`` (or of its one-hot rows) broadcasts against that
        of ``z``: labels (batch,) serve codes (samples, batch, latent_dim).
        """
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
    """``(labels,)`` for a conditional model, ``()`` for a plain one.

    ``model.encode(x, *label_arguments(model, labels))`` then works for both; a
    conditional model without labels, or a plain one with them, is refused.
    """
    if is_conditional(model) and labels is None:
        raise ValueError("this conditional VAE needs the label of every image: "
                         "pass labels")
    if not is_conditional(model) and labels is not None:
        raise ValueError("labels were given, but this VAE is not conditional "
                         "(build_vae(num_classes=10) builds one that is)")
    return () if labels is None else (labels,)


def checked_one_hot(model, labels, images, name: str) -> torch.Tensor | None:
    """The one-hot rows of ``labels`` on the model's device, checked once; or None.

    Labels are required exactly when the model is conditional and there are images
    for them to label.
    """
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

    ``num_classes=10`` builds the same MLP as a :class:`ConditionalVAE`, whose two
    networks take the one-hot label as ``num_classes`` extra inputs.

    The decoder has one output per pixel for the Bernoulli likelihoods and two for
    ``likelihood="discretized_logistic"`` (32-100-100-1568).

    ``channels`` is the width of the conv architecture (its first convolution; the
    second has twice as many), 32 unless given; the MLP has none. A conv model's
    config records it, and a config saved before it did means 32.
    """
    check_choice("architecture", architecture, ARCHITECTURES)
    if architecture != "conv" and channels is not None:
        raise ValueError(f"channels={channels!r} sets the width of the conv "
                         "architecture; the MLP's widths are its hidden_sizes")
    if architecture == "conv" and channels is None:
        channels = CONV_CHANNELS
    widths = [("channels", channels)] if architecture == "conv" else []
    for name, value in [("latent_dim", latent_dim), *widths] + [
            ("hidden_sizes", size) for size in hidden_sizes]:
        check_count(name, value)
    check_choice("likelihood", likelihood, LIKELIHOODS)
    hidden_sizes = list(hidden_sizes)
    outputs = OUTPUTS_PER_PIXEL[likelihood]
    config = {"architecture": architecture, "latent_dim": latent_dim,
              "hidden_sizes": hidden_sizes, "likelihood": likelihood}
    if architecture == "conv":
        config["channels"] = channels
    if num_classes is not None:
        return _build_conditional(config, num_classes)
    if architecture == "mlp":
        encoder = mlp([IMAGE_SIZE, *hidden_sizes, 2 * latent_dim])
        decoder = mlp([latent_dim, *reversed(hidden_sizes), outputs * IMAGE_SIZE])
    else:
        encoder = conv_encoder(latent_dim, channels)
        decoder = conv_decoder(latent_dim, channels, outputs_per_pixel=outputs)
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
def _build_conditional(config: dict, num_classes: int) -> ConditionalVAE:
    """The MLP of ``config`` with ``num_classes`` one-hot inputs more per network."""
    if config["architecture"] != "mlp":
        raise ValueError("the conditional VAE is an MLP; got architecture "
                         f"{config['architecture']!r}")
    check_count("num_classes", num_classes, minimum=2)
    latent_dim, hidden_sizes = config["latent_dim"], config["hidden_sizes"]
    encoder = mlp([IMAGE_SIZE + num_classes, *hidden_sizes, 2 * latent_dim])
    outputs = OUTPUTS_PER_PIXEL[config["likelihood"]] * IMAGE_SIZE
    decoder = mlp([latent_dim + num_classes, *reversed(hidden_sizes), outputs])
    return ConditionalVAE(encoder, decoder, latent_dim, num_classes,
                          config["likelihood"], {**config, "num_classes": num_classes})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
