"""Checkers for whole models: a convolutional encoder and decoder, an interpolation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..elbo import negative_elbo as reference_negative_elbo
from ..inputs import check_count
from ..models import IMAGE_SIZE, VAE
from ._fixtures import binary_images, default_model_and_images, kept_mode
from ._report import Report, close, explain, require_callable, seeded

_CONV = (nn.Conv2d, nn.ConvTranspose2d)


def _layer_hint(layer: nn.Module, x: torch.Tensor, error: Exception) -> str:
    """Why ``layer`` refused an input of the shape of ``x``."""
    shape = tuple(x.shape)
    if isinstance(layer, _CONV) and x.dim() == 2:
        return (f"a convolution needs (batch, channels, height, width), but it "
                f"received {shape}: unflatten first, nn.Unflatten(1, (1, 28, 28)) for "
                "the images, or to (channels, height, width) after a Linear layer.")
    if isinstance(layer, _CONV) and x.dim() == 4 and x.shape[1] != layer.in_channels:
        return (f"it expects {layer.in_channels} input channels and receives "
                f"{x.shape[1]}: set in_channels to {x.shape[1]}, the out_channels of "
                "the layer before.")
    if isinstance(layer, nn.Linear) and x.shape[-1] != layer.in_features:
        if x.dim() > 2:
            return f"it receives {shape}, not yet flat: put nn.Flatten() before it."
        return (f"it expects {layer.in_features} inputs per image and receives "
                f"{x.shape[-1]}: set in_features to {x.shape[-1]} (channels x height "
                "x width of the layer before), or fix the sizes above.")
    lines = str(error).strip().splitlines()
    return f"it raised {type(error).__name__}: {lines[0] if lines else ''}"


def _trace(report: Report, name: str, network: nn.Module, x: torch.Tensor):
    """Run ``x`` through ``network`` a layer at a time, noting each output shape.

    Returns the output and the steps ``(index, layer, input, output)``, or
    ``(None, steps)`` after reporting the layer that failed.
    """
    layers = list(network) if isinstance(network, nn.Sequential) else [network]
    report.note(f"{name}: input {tuple(x.shape)}")
    steps = []
    for index, layer in enumerate(layers):
        try:
            y = layer(x)
        except Exception as error:  # a learner's bug, reported rather than raised
            report.fail(f"{name} layer ({index}) {type(layer).__name__} accepts the "
                        f"shape {tuple(x.shape)} it receives",
                        _layer_hint(layer, x, error))
            return None, steps
        report.note(f"  ({index}) {type(layer).__name__:<16s} -> {tuple(y.shape)}")
        steps.append((index, layer, x, y))
        x = y
    return x, steps


def _encoder_hint(codes: torch.Tensor, latent_dim: int) -> str:
    if codes.dim() == 2 and codes.shape[1] == latent_dim:
        return ("it returns one number per latent unit; q(z|x) needs a mean and a "
                f"log-scale for each, so the last Linear needs 2 * latent_dim = "
                f"{2 * latent_dim} outputs.")
    if codes.dim() > 2:
        return ("its output is still a stack of feature maps: end with nn.Flatten() "
                f"and a Linear layer to 2 * latent_dim = {2 * latent_dim}.")
    return (f"it returns {tuple(codes.shape)}; the last Linear needs out_features = "
            f"2 * latent_dim = {2 * latent_dim}.")


def _decoder_hint(logits: torch.Tensor, steps) -> str:
    if logits.dim() == 4 and tuple(logits.shape[1:]) == (1, 28, 28):
        return ("it returns images (batch, 1, 28, 28); end with nn.Flatten() so that "
                "the logits are (batch, 784), one per pixel, as p(x|z) expects.")
    images = [y for *_, y in steps if y.dim() == 4]  # the last feature maps
    if images and tuple(images[-1].shape[-2:]) != (28, 28):
        return _where_the_size_breaks(images[-1], steps)
    if logits.dim() == 4:
        return (f"it returns {logits.shape[1]} channels; the last layer needs one "
                "output channel, one logit per pixel.")
    return (f"it returns {tuple(logits.shape)}; the decoder needs one logit per pixel, "
            "(batch, 784).")


def _where_the_size_breaks(images: torch.Tensor, steps) -> str:
    """The first transposed convolution that does not multiply the size by its stride."""
    height, width = images.shape[-2:]
    hint = f"it ends at {height}x{width} pixels, not 28x28."
    for index, layer, x, y in steps:
        if not isinstance(layer, nn.ConvTranspose2d) or layer.stride[0] == 1:
            continue
        n, m = x.shape[-1], y.shape[-1]
        (k,), (s,), (p,), (a,) = (layer.kernel_size[:1], layer.stride[:1],
                                  layer.padding[:1], layer.output_padding[:1])
        if m == n * s:
            continue
        hint += (f" Layer ({index}) ConvTranspose2d turns {n} pixels into {m}, not "
                 f"{n} x {s} = {n * s}: (n - 1) s - 2p + k + output_padding = "
                 f"({n} - 1)*{s} - 2*{p} + {k} + {a} = {m}.")
        if m == n * s - 1:
            hint += " output_padding=1 adds the missing pixel."
        elif m == n * s + 1:
            hint += (" One pixel too many: padding one larger (and output_padding=1) "
                     "fixes it.")
        return hint
    return hint + (" Work the sizes above out with (n - 1) s - 2p + k + output_padding"
                   " for each transposed convolution.")


def _check_trains(report: Report, model: VAE, images: torch.Tensor) -> None:
    what = ("trains inside vc.models.VAE: a finite -ELBO whose gradient reaches "
            "every parameter")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    try:
        with seeded():
            loss, _ = reference_negative_elbo(model, images)
        gradients = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    except Exception as error:  # a learner's bug, reported rather than raised
        report.fail(what, f"it raised {type(error).__name__}: {error}")
        return
    if not bool(torch.isfinite(loss)):
        report.fail(what, f"the -ELBO is {float(loss)}.")
        return
    missing = [name for (name, _), grad in zip(named, gradients, strict=True)
               if grad is None]
    if missing:
        report.fail(what, f"no gradient reaches {missing[:4]}: those layers are not "
                    "on the path from the image to the loss.")
    else:
        report.ok(f"{what} ({sum(p.numel() for _, p in named):,d} parameters)")


def conv_vae(encoder: nn.Module, decoder: nn.Module, latent_dim: int = 32) -> bool:
    """Check an ``encoder``, (batch, 784) -> (batch, 2 * latent_dim), and a
    ``decoder``, (batch, latent_dim) -> (batch, 784) logits: the shape after each
    layer, then one -ELBO and its gradients inside ``vc.models.VAE``.
    """
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"pass the {name} as an nn.Module (an nn.Sequential); "
                            f"got {type(module).__name__}")
    check_count("latent_dim", latent_dim, 1)
    report = Report(f"Checking a convolutional encoder and decoder for 28x28 images "
                    f"and latent_dim = {latent_dim}:")
    batch = 4
    generator = torch.Generator().manual_seed(0)
    images = binary_images(batch, generator)
    codes = torch.randn(batch, latent_dim, generator=generator)
    with torch.no_grad():
        encoded, _ = _trace(report, "encoder", encoder, images)
        wanted = (batch, 2 * latent_dim)
        encoder_fits = encoded is not None and report.check(
            f"the encoder returns (batch, 2 * latent_dim) = {wanted}",
            tuple(encoded.shape) == wanted, lambda: _encoder_hint(encoded, latent_dim))
        logits, steps = _trace(report, "decoder", decoder, codes)
        decoder_fits = logits is not None and report.check(
            f"the decoder returns (batch, 784) = {(batch, IMAGE_SIZE)} logits",
            tuple(logits.shape) == (batch, IMAGE_SIZE),
            lambda: _decoder_hint(logits, steps))
    if encoder_fits and decoder_fits:
        _check_trains(report, VAE(encoder, decoder, latent_dim), images)
    return report.finish()


# --------------------------------------------------------------- interpolation


def interpolation(fn: Callable, model=None) -> bool:
    """Check ``fn(model, x_a, x_b, steps) -> (steps, 784)``: the decoder's pixel
    means along the straight line between the posterior means of two images, at
    ``t = torch.linspace(0, 1, steps)``, the same on every call.
    """
    require_callable(fn)
    default_model, images = default_model_and_images()
    model = default_model if model is None else model
    x_a, x_b = images[0].to(model.device), images[1].to(model.device)
    steps = 7
    report = Report(f"Checking the interpolation, called as fn(model, x_a, x_b, "
                    f"steps={steps}):")
    with kept_mode(model):
        model.eval()
        _check_interpolation(report, fn, model, x_a, x_b, steps)
    return report.finish()


def _frames_along(model, x_a, x_b, t) -> torch.Tensor:
    """Pixel means decoded on the line between the posterior means, at each t."""
    with torch.no_grad():
        start, end = model.encode(torch.stack([x_a, x_b])).mean  # (latent_dim,) each
        return model.decode((1 - t[:, None]) * start + t[:, None] * end).mean


def _check_interpolation(report, fn, model, x_a, x_b, steps) -> None:
    with torch.no_grad():
        first = report.call(fn, model, x_a, x_b, steps)
    if not report.tensor(first, "the frames"):
        return
    first = first.detach()
    hint = f"it returned shape {tuple(first.shape)}."
    if first.numel() == steps * IMAGE_SIZE:
        hint += f" Flatten the frames to (steps, {IMAGE_SIZE})."
    elif first.dim() == 2 and first.shape[1] == IMAGE_SIZE:
        hint += (" One frame per value of t, both ends included: "
                 "t = torch.linspace(0, 1, steps).")
    if not report.check(f"returns one frame per step, shape ({steps}, {IMAGE_SIZE})",
                        first.shape == (steps, IMAGE_SIZE), hint):
        return
    what = "returns pixel means, not Bernoulli draws"
    if bool(((first == 0) | (first == 1)).all()):
        report.fail(what, "every value is 0 or 1: those are draws (.sample()) of "
                    "p(x|z); show the pixel means, model.decode(z).mean.")
    else:
        report.check(what, not bool(((first < 0) | (first > 1)).any()),
                     "values outside [0, 1]: those look like logits; the pixel means "
                     "are model.decode(z).mean (the sigmoid of the logits).")
    with torch.no_grad():
        again = report.call(fn, model, x_a, x_b, steps)
    if not (report.tensor(again, "the frames") and report.check(
            "gives the same frames on every call", close(again.detach(), first, 1e-9),
            "the frames change between calls: encode each image to its posterior "
            "mean (.mean), not a draw (rsample), and decode means.")):
        return
    t = torch.linspace(0, 1, steps, device=first.device)
    slips = [
        (_frames_along(model, x_b, x_a, t), "It runs from x_b to x_a: at t = 0 "
                                            "the path starts at mu(x_a)."),
        (_frames_along(model, x_a, x_b, torch.arange(steps, device=t.device) / steps),
         "The last frame stops short of x_b: t = torch.linspace(0, 1, steps) "
         "includes both ends."),
        ((1 - t[:, None]) * x_a + t[:, None] * x_b,
         "That blends the pixels of the two images, not their codes: encode both, "
         "interpolate the posterior means, decode."),
    ]
    report.check("decodes the straight line between the two posterior means, t from "
                 "0 to 1", close(first, _frames_along(model, x_a, x_b, t), 1e-4),
                 lambda: explain(slips, lambda frames: close(first, frames, 1e-4),
                                 "the frames differ from the decoded means along "
                                 "the line."))
