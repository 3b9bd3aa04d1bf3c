"""A fast training loop: the whole data set lives in one tensor on the model's device.

The Deep Bayes tutorial fed the model through a DataLoader that turned every image
into a tensor one by one; most of each epoch went there. Here an epoch is a
``randperm`` and a slice per step, and the only per-step work is the model's own:
the pixels are checked once before training rather than at every step, and the
terms of the ELBO are summed and looked at (which makes the CPU wait for the
device) every ``CHECK_EVERY`` steps, all of those steps in one call, rather than
after each one.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .data import binarize as binarize_images
from .data import check_pixel_values
from .distributions import check_pixels
from .elbo import (
    beta_loss,
    mean_terms,
    negative_elbo_of_checked_pixels,
    negative_iwae_bound_of_checked_pixels,
    terms_of_checked_pixels,
    unvalidated_distributions,
)
from .models import IMAGE_SIZE, is_conditional

TERMS = ("loss", "reconstruction", "entropy", "cross_entropy", "kl")
# Steps between two looks at the losses (for divergence and the progress bar).
CHECK_EVERY = 50


@dataclass
class History:
    """One row per epoch: the epoch, its seconds, every term on train and validation."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        return [row[name] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


def check_images(images: torch.Tensor, name: str = "images",
                 dtype: torch.dtype = torch.float32) -> None:
    """Refuse anything but a (N, 784) tensor of ``dtype`` with pixels in [0, 1].

    ``dtype`` is that of the model's weights (float32 unless the model was
    converted): ``torch.from_numpy`` gives float64, which ``nn.Linear`` refuses.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(images).__name__}")
    if images.dim() != 2 or images.shape[1] != IMAGE_SIZE or len(images) == 0:
        raise ValueError(f"{name} must have shape (N, {IMAGE_SIZE}) with N > 0; "
                         f"got {tuple(images.shape)}")
    if images.dtype != dtype:
        hint = f" (convert them with .to({dtype}))" if images.is_floating_point() else ""
        raise ValueError(f"{name} must be floating point of the model's type, "
                         f"{_short(dtype)}; got {_short(images.dtype)}{hint}")
    check_pixel_values(images, name)


def check_labels(labels, num_images: int, num_classes: int,
                 name: str = "labels") -> None:
    """Refuse anything but int64 class indices 0..num_classes-1, one per image."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(labels).__name__}")
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


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


def wants_binarization(model, binarize: bool | None) -> bool:
    """``binarize`` as given, or by default: binarize for a Bernoulli likelihood."""
    return model.likelihood == "bernoulli" if binarize is None else binarize


def fixed_binarization(images: torch.Tensor, binarize: bool, seed: int = 0):
    """Held-out images as evaluated: one seeded binarization, the same every epoch.

    Used for the validation images while training and for the test images after.
    """
    if not binarize:
        return images
    return binarize_images(images.cpu(), torch.Generator().manual_seed(seed))


def warmup_weight(step: int, beta: float, warmup_steps: int) -> float:
    """The KL weight at optimizer step ``step`` (1, 2, ...) of a linear warm-up.

    It rises from ``beta / warmup_steps`` at step 1 to ``beta`` at step
    ``warmup_steps`` and stays there; ``warmup_steps = 0`` means no warm-up.
    """
    return beta * min(1.0, step / warmup_steps) if warmup_steps else beta


# torch.compile's Inductor draws random numbers with PyTorch's own generator, as
# eager code does, so that a compiled step samples the same z from the same seed.
COMPILE_OPTIONS = {"fallback_random": True}


def step_loss(iwae_samples: int = 1, compiled: bool = False) -> Callable:
    """What a training step calls: ``(model, batch, weight, labels) -> (loss, terms)``.

    ``weight`` is the step's KL weight (beta, or its warm-up) and ``labels`` the
    one-hot rows of a conditional VAE, or None. ``compiled`` puts the terms through
    ``torch.compile``: the forward pass becomes one graph of fused kernels, and so
    does its backward pass. The KL weight is applied outside the graph, so that a
    warm-up's new weight at every step does not build it again; a smaller last
    batch does get a graph of its own (the shapes are fixed). The first steps wait
    for the compiler (tens of seconds on a CPU); the floats then differ from eager
    ones by the order in which the fused kernels add them.
    """
    if iwae_samples > 1:
        bound = negative_iwae_bound_of_checked_pixels
        if compiled:
            bound = _compile(bound)
        return lambda model, batch, weight, labels: bound(model, batch, iwae_samples)
    if not compiled:
        return lambda model, batch, weight, labels: negative_elbo_of_checked_pixels(
            model, batch, beta=weight, labels=labels)
    terms_of = _compile(terms_of_checked_pixels)

    def compiled_loss(model, batch, weight, labels):
        terms = terms_of(model, batch, labels)
        return beta_loss(terms, weight), terms

    return compiled_loss


def _compile(function: Callable) -> Callable:
    """``torch.compile(function)``, leaving torch.distributions' checks as they were.

    The first ``torch.compile`` of a process switches the argument checks of every
    distribution off, for good. The course switches them off only around inputs it
    has checked itself, so a learner's bad input still gets torch's error after a
    compiled run.
    """
    checking = Distribution._validate_args
    try:
        return torch.compile(function, dynamic=False, options=COMPILE_OPTIONS)
    finally:
        Distribution.set_default_validate_args(checking)


def _train_epoch(model, optimizer, images, *, batch_size, binarize, beta, warmup_steps,
                 epoch, step_offset, bar, loss_of, label_rows=None) -> dict[str, float]:
    num_steps = math.ceil(len(images) / batch_size)
    # Each step's per-image terms (reconstruction, entropy, cross-entropy), copied
    # into one buffer on the device and summed only when they are looked at: a step
    # adds no work of its own to the model's. Nor does it keep tensors of its own
    # alive until then: small tensors held over many steps made the memory allocator
    # hand memory back to the system and fault it in again (thousands of page faults
    # in an epoch of 100 steps, where the hand-written loop of
    # benchmarks/epoch_speed.py had next to none).
    # fit checked that the images have the model's dtype and moved them to its device.
    buffer = images.new_empty((CHECK_EVERY, 3, batch_size))  # full batches' terms
    # Its rows as views made once: a view made at each step (buffer[filled]) cost 1
    # to 3% of a step in two of three step-by-step timings (as epoch_speed.py's).
    rows = buffer.unbind(0)  # CHECK_EVERY views, (3, batch) each
    filled = 0  # full batches in the buffer since the last look
    short = None  # (1, 3): the sums of a smaller last batch
    sums = []  # (steps, 3) blocks of the steps looked at so far
    order = torch.randperm(len(images), device=images.device)
    for step in range(1, num_steps + 1):
        start = (step - 1) * batch_size
        indices = order[start:start + batch_size]
        batch = images[indices]  # (batch, 784)
        labels = None if label_rows is None else label_rows[indices]  # one-hot rows
        if binarize:
            # A fresh draw each time it is seen; fit checked the grey levels.
            batch = torch.bernoulli(batch)
        weight = warmup_weight(step_offset + step, beta, warmup_steps)
        loss, terms = loss_of(model, batch, weight, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_terms = (terms["reconstruction"], terms["entropy"], terms["cross_entropy"])
        with torch.no_grad():
            if len(batch) == batch_size:
                torch.stack(step_terms, out=rows[filled])
                filled += 1
            else:  # the last batch, when it is smaller, is summed at once
                short = torch.stack(step_terms).sum(-1)[None]
        if step % CHECK_EVERY == 0 or step == num_steps:
            block = _step_sums(buffer, filled, short)  # (steps, 3)
            looked_at = step - len(block)
            _check_finite(block, looked_at, epoch)
            sums.append(block)
            filled, short = 0, None
            reconstruction, entropy, cross_entropy = block[-1].tolist()
            last_loss = (cross_entropy - entropy - reconstruction) / len(batch)
            bar.update(len(block))
            bar.set_postfix(epoch=epoch, loss=f"{last_loss:.2f}")
    # Sum in float64 so that the epoch's mean does not depend on the step count.
    reconstruction, entropy, cross_entropy = torch.cat(sums).double().sum(0).tolist()
    totals = {"reconstruction": reconstruction, "entropy": entropy,
              "cross_entropy": cross_entropy, "kl": cross_entropy - entropy,
              "loss": cross_entropy - entropy - reconstruction}  # the true -ELBO
    return {name: totals[name] / len(images) for name in TERMS}


def _step_sums(buffer, filled: int, short) -> torch.Tensor:
    """Each step's sums over its images of the three terms: (steps, 3).

    ``buffer[:filled]`` holds the full batches' terms, (steps, 3, batch), summed in
    one call; ``short`` is the (1, 3) sums of a smaller last batch, or None.
    """
    blocks = [buffer[:filled].sum(-1)] if filled else []
    if short is not None:
        blocks.append(short)
    return torch.cat(blocks)


def _check_finite(sums, looked_at, epoch) -> None:
    """Raise at the first step after ``looked_at`` whose terms are not finite."""
    finite = torch.isfinite(sums).all(1)  # (steps,)
    if bool(finite.all()):
        return
    index = int((~finite).nonzero()[0])
    reconstruction, entropy, cross_entropy = sums[index].tolist()
    raise FloatingPointError(
        f"training diverged at epoch {epoch}, step {looked_at + index + 1} (the "
        f"negative ELBO became {cross_entropy - entropy - reconstruction}); try a "
        "smaller learning rate")


def _diverged(epoch: int, what: str) -> FloatingPointError:
    return FloatingPointError(f"training diverged at epoch {epoch}, in its last step "
                              f"({what}); try a smaller learning rate")


def _check_weights_finite(model, epoch: int) -> None:
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            raise _diverged(epoch, f"{name} holds NaN or infinite weights")


def _validation_terms(model, validation: torch.Tensor, epoch: int,
                      label_rows=None) -> dict[str, float]:
    """The validation pass of an epoch; a model broken by its last step diverged."""
    try:
        terms = mean_terms(model, validation, labels=label_rows)
    except ValueError as error:
        # torch.distributions refuses a scale that overflowed to inf or fell to 0.
        raise _diverged(epoch, str(error).splitlines()[0]) from None
    terms["loss"] = -terms.pop("elbo")
    if not all(math.isfinite(terms[name]) for name in TERMS):
        raise _diverged(epoch, f"the validation loss became {terms['loss']}")
    return {f"validation_{name}": terms[name] for name in TERMS}


def fit(model, train_images: torch.Tensor,
        validation_images: torch.Tensor | None = None, *,
        num_epochs: int, batch_size: int = 100, learning_rate: float = 1e-3,
        seed: int = 0, binarize: bool | None = None, beta: float = 1.0,
        warmup_epochs: int = 0, progress: bool = True,
        callback: Callable | None = None, optimizer: torch.optim.Optimizer | None = None,
        history: History | None = None, train_labels: torch.Tensor | None = None,
        validation_labels: torch.Tensor | None = None,
        iwae_samples: int = 1, compiled: bool = False) -> History:
    """Train ``model`` with Adam and return its per-epoch :class:`History`.

    ``train_loss`` and ``validation_loss`` are the negative ELBO in nats per image
    (beta and warm-up change what is optimised, not what is reported); compare and
    choose models on the validation columns and keep the test set for the final
    numbers. ``binarize`` (by default: when the likelihood is Bernoulli) draws fresh
    binary pixels for every batch and fixes one draw of the validation images.
    To resume, pass the ``optimizer`` and ``history`` saved with the model:
    every epoch reseeds from ``(seed, epoch)``, so the result equals a straight run.
    ``callback(model, optimizer, history)`` runs after every epoch. A conditional
    VAE (``build_vae(num_classes=10)``) needs ``train_labels`` and, with validation
    images, ``validation_labels``: int64 class indices, one per image.
    ``iwae_samples`` = k > 1 trains an IWAE: the loss is the k-sample bound
    (:func:`vae_course.elbo.iwae_bound`), which has no KL term for beta or
    warm-up to weight; k = 1 is the VAE's training, closed-form KL and all.
    ``compiled=True`` trains through ``torch.compile`` (see :func:`step_loss`;
    it needs a C++ compiler on a CPU): faster steps after a slow start, the same
    random draws, and floats that differ from an eager run's by rounding.
    """
    num_epochs = check_number("num_epochs", num_epochs, integer=True)
    batch_size = check_number("batch_size", batch_size, integer=True)
    learning_rate = check_number("learning_rate", learning_rate)
    seed = check_number("seed", seed, integer=True, allow_zero=True)
    beta = check_number("beta", beta, allow_zero=True)
    warmup_epochs = check_number("warmup_epochs", warmup_epochs, allow_zero=True)
    iwae_samples = check_number("iwae_samples", iwae_samples, integer=True)
    if not isinstance(compiled, bool):
        raise ValueError(f"compiled must be True or False; got {compiled!r}")
    if iwae_samples > 1 and is_conditional(model):
        raise ValueError(f"iwae_samples={iwae_samples}: the k-sample bound is written "
                         "for the plain VAE; train a conditional VAE on its ELBO "
                         "(iwae_samples=1)")
    if iwae_samples > 1 and (beta != 1 or warmup_epochs != 0):
        raise ValueError(f"iwae_samples={iwae_samples} trains on the k-sample bound, "
                         "which has no KL term to weight: leave beta at 1 and "
                         "warmup_epochs at 0")
    dtype = next(model.parameters()).dtype
    check_images(train_images, "train_images", dtype)
    if validation_images is not None:
        check_images(validation_images, "validation_images", dtype)
    train_rows = checked_one_hot(model, train_labels, train_images, "train_labels")
    validation_rows = checked_one_hot(model, validation_labels, validation_images,
                                      "validation_labels")
    binarize = wants_binarization(model, binarize)
    device = model.device
    train = train_images.to(device)
    validation = None
    if validation_images is not None:
        validation = fixed_binarization(validation_images, binarize, seed).to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=learning_rate)
    history = history if history is not None else History()
    steps_per_epoch = math.ceil(len(train) / batch_size)
    done = len(history)
    if not binarize:
        check_pixels(train, model.likelihood)  # once: the steps do not check again
    loss_of = step_loss(iwae_samples, compiled)
    bar = tqdm(total=num_epochs * steps_per_epoch, initial=done * steps_per_epoch,
               disable=not progress, desc="training", unit="step")
    try:
        for epoch in range(done + 1, num_epochs + 1):
            torch.manual_seed(seed * 1_000_003 + epoch)
            started = time.perf_counter()
            model.train()
            # Every step's loss builds its distributions unchecked (the pixels were
            # checked above); switched off once for the epoch, the steps find them
            # off already. The validation pass below keeps torch's checks.
            with unvalidated_distributions():
                train_terms = _train_epoch(
                    model, optimizer, train, batch_size=batch_size,
                    binarize=binarize, beta=beta,
                    warmup_steps=warmup_epochs * steps_per_epoch, epoch=epoch,
                    step_offset=(epoch - 1) * steps_per_epoch, bar=bar,
                    loss_of=loss_of, label_rows=train_rows)
            seconds = time.perf_counter() - started
            # The loop looks at the losses, not at what the last step did to the
            # weights: that is checked here, before the model is tested or saved.
            _check_weights_finite(model, epoch)
            row = {"epoch": epoch, "seconds": seconds}
            row.update({f"train_{name}": value for name, value in train_terms.items()})
            if validation is not None:
                model.eval()
                row.update(_validation_terms(model, validation, epoch, validation_rows))
            history.rows.append(row)
            if validation is not None:
                bar.set_postfix(epoch=epoch,
                                validation_loss=f"{row['validation_loss']:.2f}")
            else:
                bar.set_postfix(epoch=epoch, train_loss=f"{row['train_loss']:.2f}")
            if callback is not None:
                callback(model, optimizer, history)
    finally:
        bar.close()
    model.eval()
    return history
