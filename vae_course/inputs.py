"""Checks of what the package is given: numbers, images, pixels and labels.

Every public function of the course checks its arguments with these, so each rule
and its message is written once. Each check raises ``TypeError`` or ``ValueError``
with a message that says what was expected and what came.
"""

from __future__ import annotations

import math
import numbers

import torch

#: Pixels of a 28 x 28 image, flattened.
IMAGE_SIZE = 28 * 28
#: The pixel likelihoods of :mod:`vae_course.distributions`.
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "discretized_logistic")
#: Grey levels of an 8-bit image: pixel k / 255 for k = 0 .. 255.
NUM_LEVELS = 256


class GreyPixelsError(ValueError):
    """Grey-level pixels were given to a Bernoulli likelihood."""


def check_number(name: str, value, *, integer: bool = False,
                 allow_zero: bool = False):
    """``value`` as a plain int or float if it is a finite number above zero.

    ``allow_zero`` also accepts zero. Booleans are refused although Python counts
    them as integers, and so are NaN and infinity, which compare False with every
    bound. Returns the value as ``int`` (``integer=True``) or ``float``.
    """
    kind = "an integer" if integer else "a number"
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise TypeError(f"{name} must be {kind}; got {value!r}")
    value = int(value) if integer else float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise ValueError(f"{name} must be {bound}; got {value!r}")
    return value


def check_choice(kind: str, value, choices) -> None:
    """Refuse a ``value`` that is not one of ``choices``, listing them."""
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"unknown {kind} {value!r}; choose one of {listed}")


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")


def check_pixel_values(x: torch.Tensor, name: str = "pixels") -> None:
    """Refuse anything but a floating-point tensor of values in [0, 1].

    NaN is named on its own: it compares False with every bound, so a range test
    alone lets it in.
    """
    check_tensor(x, name)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1]; got {x.dtype}")
    if not x.numel():
        return
    low, high = torch.aminmax(x)  # NaN propagates into both
    if bool((low >= 0) & (high <= 1)):  # one pass, one wait in the usual case
        return
    nan = torch.isnan(x)
    if bool(nan.any()):
        raise ValueError(f"{name} must hold pixels in [0, 1], but {int(nan.sum())} "
                         f"of {x.numel()} values are NaN")
    raise ValueError(f"{name} must hold pixels in [0, 1]; found values in "
                     f"[{float(low):.4g}, {float(high):.4g}]")


def check_images(images: torch.Tensor, name: str = "images",
                 dtype: torch.dtype = torch.float32,
                 likelihood: str | None = None) -> None:
    """Refuse anything but a (N, 784) tensor of ``dtype`` with pixels in [0, 1], and
    with a ``likelihood``, pixels it can score (:func:`check_pixels`).

    N must be at least 1: an empty batch has no mean to report. ``dtype`` is that of
    the model's weights (``torch.from_numpy`` gives float64, which a float32
    ``nn.Linear`` refuses).
    """
    check_tensor(images, name)
    if images.dim() != 2 or images.shape[1] != IMAGE_SIZE or len(images) == 0:
        raise ValueError(f"{name} must have shape (N, {IMAGE_SIZE}) with N > 0; "
                         f"got {tuple(images.shape)}")
    if images.dtype != dtype:
        hint = f" (convert them with .to({dtype}))" if images.is_floating_point() else ""
        raise ValueError(f"{name} must be floating point of the model's type, "
                         f"{_short(dtype)}; got {_short(images.dtype)}{hint}")
    if likelihood is None:
        check_pixel_values(images, name)
    else:
        check_pixels(images, likelihood, name)


def is_grey_level(x: torch.Tensor) -> torch.Tensor:
    """Which values are one of the 256 levels k / 255 (up to float rounding)."""
    levels = x * (NUM_LEVELS - 1)
    return (x >= 0) & (x <= 1) & ((levels - levels.round()).abs() < 1e-3)


def check_pixels(x: torch.Tensor, kind: str = "bernoulli", name: str = "pixels") -> None:
    """Refuse pixels the likelihood ``kind`` cannot score, with a message that says why.

    NaN, values outside [0, 1] and non-float tensors are refused for every
    likelihood; grey levels for the Bernoulli, and values between the 256 levels
    k / 255 (dequantized or smoothed pixels) for the discretized logistic.
    """
    check_choice("likelihood", kind, LIKELIHOODS)
    check_pixel_values(x, name)
    if kind == "bernoulli" and bool(((x != 0) & (x != 1)).any()):
        raise GreyPixelsError(
            "a Bernoulli likelihood scores only pixels that are exactly 0 or 1, "
            "but these images have grey levels. Binarize them "
            "(vae_course.data.binarize) or use likelihood='continuous_bernoulli'."
        )
    if kind == "discretized_logistic" and not bool(is_grey_level(x).all()):
        raise ValueError(
            "a discretized logistic scores only the 256 grey levels k / 255 of an "
            "8-bit image, but these pixels lie between them (dequantized or "
            "smoothed?). Pass the images as vae_course.data.load_mnist gives them, "
            "or use likelihood='continuous_bernoulli' for a density on [0, 1]."
        )


def check_labels(labels, num_images: int, num_classes: int,
                 name: str = "labels") -> None:
    """Refuse anything but int64 class indices 0..num_classes-1, one per image."""
    check_tensor(labels, name)
    if labels.dtype != torch.int64:
        hint = " (labels as floats? convert them with .long())" \
            if labels.is_floating_point() else " (convert them with .long())"
        raise ValueError(f"{name} must be int64 class indices; got "
                         f"{_short(labels.dtype)}{hint}")
    if tuple(labels.shape) != (num_images,):
        raise ValueError(f"{name} must have shape ({num_images},), one label per "
                         f"image; got {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}; found "
                         f"{int(labels.min())}..{int(labels.max())}")


def check_count(name: str, value, minimum: int = 1, why: str = "") -> int:
    """``value`` if it is an integer of at least ``minimum`` (not a bool); ``why``
    follows the minimum in the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer of at least {minimum}{why}")
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    return value
