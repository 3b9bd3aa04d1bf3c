"""Inputs several checkers share: seeded Gaussians, a small VAE and binary images."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch.distributions import Independent, Normal

from ..elbo import kl_standard_normal as kl_of_posterior
from ..models import IMAGE_SIZE, build_vae
from ._report import Report, seeded


def diagonal_gaussian(mu: torch.Tensor, log_var: torch.Tensor) -> Independent:
    """q(z|x) from a mean and a log-variance, batch shape (batch,)."""
    return Independent(Normal(mu, (0.5 * log_var).exp()), 1)


def kl_closed_form(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """The package's closed-form KL to N(0, I), from a mean and a log-variance."""
    return kl_of_posterior(diagonal_gaussian(mu, log_var))


def gaussian_parameters(low: float, high: float):
    """Seeded ``mu`` and ``log_var`` of shape (3, 8) in float64, both requiring
    gradients; ``log_var`` uniform in [low, high]."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    log_var = torch.empty(3, 8, dtype=torch.float64).uniform_(low, high,
                                                             generator=generator)
    return mu.requires_grad_(True), log_var.requires_grad_(True)


def binary_images(num_images: int, generator: torch.Generator) -> torch.Tensor:
    """Seeded binary images, (num_images, 784), about a third of the pixels on."""
    probabilities = torch.rand(num_images, IMAGE_SIZE, generator=generator) * 0.6
    return torch.bernoulli(probabilities, generator=generator)


def default_model_and_images(num_classes: int | None = None):
    """A small seeded VAE whose posteriors are far from the prior, and 8 images.

    ``num_classes`` builds the same model as a conditional VAE.
    """
    with seeded():
        model = build_vae(latent_dim=4, hidden_sizes=(32,), num_classes=num_classes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        last = model.encoder[-1]
        # Means far from 0 and narrow posteriors: a KL of tens of nats, which
        # keeps each slip far from the right answer.
        last.bias[:4] = 3.0 * torch.randn(4, generator=generator)
        last.bias[4:] = torch.empty(4).uniform_(-2.0, -1.0, generator=generator)
        model.decoder[0].weight.mul_(2.0)  # so that the draw of z matters
    return model, binary_images(8, generator)


@contextmanager
def kept_mode(model):
    """Seeded, and leaving the model's mode (training or evaluation) as it was."""
    was_training = model.training
    try:
        with seeded():
            yield
    finally:
        model.train(was_training)


def on_model(model, images, title: str, check: Callable) -> bool:
    """``check(model, images, report)`` on the given or the default model and images,
    in ``kept_mode``."""
    if (model is None) != (images is None):
        raise ValueError("pass both model and images, or neither")
    if model is None:
        model, images = default_model_and_images()
    images = images.to(model.device)
    report = Report(title.format(len(images)))
    with kept_mode(model):
        return check(model, images, report)


@contextmanager
def decoder_inputs(model):
    """The tensors the model's decoder network receives while the block runs."""
    inputs = []
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):  # another kind of model: no record
        yield inputs
        return
    handle = decoder.register_forward_pre_hook(
        lambda module, args: inputs.extend(a for a in args if torch.is_tensor(a)))
    try:
        yield inputs
    finally:
        handle.remove()
