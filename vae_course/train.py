"""The training loop of lesson 04, with a progress bar, validation and a callback.

The whole data set lives in one tensor on the model's device: an epoch is a
``randperm`` and a slice per step, several times faster on a CPU than the Deep
Bayes tutorial's DataLoader, which turned every image into a tensor one by one.
The images are checked once, before the first step, so the steps do not check
them again, and torch.distributions' own argument checks are off during the
epoch's steps. Each step's terms are looked at (for the progress bar and for a
diverged loss) every ``CHECK_EVERY`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .data import binarize as binarize_images
from .distributions import unchecked_arguments
from .elbo import beta_loss, elbo_terms, iwae_terms, mean_terms
from .inputs import check_images, check_number
from .models import checked_one_hot, is_conditional

TERMS = ("loss", "reconstruction", "entropy", "cross_entropy", "kl")
# The terms each step sums over its images; the others follow from them.
SUMMED = ("reconstruction", "entropy", "cross_entropy")
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


def check_objective(beta: float, warmup_epochs: float, iwae_samples: int) -> None:
    """Refuse a KL weight (beta, warm-up) together with the k-sample bound."""
    if iwae_samples > 1 and (beta != 1 or warmup_epochs != 0):
        raise ValueError(f"iwae_samples={iwae_samples} trains on the k-sample bound, "
                         "which has no KL term to weight: leave beta at 1 and "
                         "warmup_epochs at 0")


# torch.compile's Inductor draws random numbers with PyTorch's own generator, as
# eager code does, so that a compiled step samples the same z from the same seed.
COMPILE_OPTIONS = {"fallback_random": True}


def step_terms(iwae_samples: int = 1, compiled: bool = False) -> Callable:
    """What a training step computes: ``(model, batch, labels) -> terms``.

    The ELBO's terms (one draw of z, closed-form KL), or with ``iwae_samples`` = k
    > 1 the k-sample bound's. ``compiled`` puts them through ``torch.compile``:
    the forward pass becomes one graph of fused kernels, and so does its backward
    pass. The KL weight is applied outside the graph, so that a warm-up's new
    weight at every step does not build it again; a smaller last batch gets a
    graph of its own. The first steps wait for the compiler (tens of seconds on a
    CPU); the floats then differ from eager ones by the order of their sums.
    """
    if iwae_samples > 1:
        def terms_of(model, batch, labels):
            return iwae_terms(model, batch, iwae_samples, check=False)
    else:
        def terms_of(model, batch, labels):
            return elbo_terms(model, batch, labels=labels, check=False)
    if not compiled:
        return terms_of
    compiled_terms = torch.compile(terms_of, dynamic=False, options=COMPILE_OPTIONS)
    # torch.compile switches torch.distributions' checks off for the process; the
    # course keeps them on outside the trainer's steps.
    Distribution.set_default_validate_args(True)
    return compiled_terms


def step_loss(terms: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """The loss a step minimises: -L_k for an IWAE, else the -ELBO with a KL weight."""
    if "bound" in terms:
        return -terms["bound"].mean()
    return beta_loss(terms, weight)


def _train_epoch(model, optimizer, images, label_rows, *, batch_size, binarize, beta,
                 warmup_steps, step_offset, terms_of, epoch, bar) -> dict[str, float]:
    """One pass over ``images``: lesson 04's loop, plus the terms for the history."""
    sums = []  # each step's sums over its images of the SUMMED terms: (3,) each
    looked_at = 0
    order = torch.randperm(len(images), device=images.device)  # a new shuffle
    for step, start in enumerate(range(0, len(images), batch_size), start=1):
        indices = order[start:start + batch_size]
        batch = images[indices]  # (batch, 784)
        if binarize:
            batch = torch.bernoulli(batch)  # a fresh binary draw
        labels = None if label_rows is None else label_rows[indices]  # one-hot rows
        terms = terms_of(model, batch, labels)
        weight = warmup_weight(step_offset + step, beta, warmup_steps)  # the KL's
        loss = step_loss(terms, weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sums.append(torch.stack([terms[name].sum() for name in SUMMED]))
        if step % CHECK_EVERY == 0 or start + batch_size >= len(images):
            block = torch.stack(sums[looked_at:])  # (steps, 3), one wait for them
            _check_finite(block, looked_at, epoch)
            looked_at = len(sums)
            reconstruction, entropy, cross_entropy = block[-1].tolist()
            last_loss = (cross_entropy - entropy - reconstruction) / len(batch)
            bar.update(len(block))
            bar.set_postfix(epoch=epoch, loss=f"{last_loss:.2f}")
    # Sum in float64 so that the epoch's mean does not depend on the step count.
    reconstruction, entropy, cross_entropy = torch.stack(sums).double().sum(0).tolist()
    totals = {"reconstruction": reconstruction, "entropy": entropy,
              "cross_entropy": cross_entropy, "kl": cross_entropy - entropy,
              "loss": cross_entropy - entropy - reconstruction}  # the true -ELBO
    return {name: totals[name] / len(images) for name in TERMS}


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
    check_objective(beta, warmup_epochs, iwae_samples)
    binarize = wants_binarization(model, binarize)
    dtype = next(model.parameters()).dtype
    # Once, before the first step: the steps do not check again. Images to be
    # binarized need only be grey levels; the others must suit the likelihood.
    likelihood = None if binarize else model.likelihood
    check_images(train_images, "train_images", dtype, likelihood)
    if validation_images is not None:
        check_images(validation_images, "validation_images", dtype, likelihood)
    train_rows = checked_one_hot(model, train_labels, train_images, "train_labels")
    validation_rows = checked_one_hot(model, validation_labels, validation_images,
                                      "validation_labels")
    device = model.device
    train = train_images.to(device)
    validation = None
    if validation_images is not None:
        validation = fixed_binarization(validation_images, binarize, seed).to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=learning_rate)
    history = history if history is not None else History()
    steps_per_epoch = math.ceil(len(train) / batch_size)
    done = len(history)
    terms_of = step_terms(iwae_samples, compiled)
    bar = tqdm(total=num_epochs * steps_per_epoch, initial=done * steps_per_epoch,
               disable=not progress, desc="training", unit="step")
    try:
        for epoch in range(done + 1, num_epochs + 1):
            torch.manual_seed(seed * 1_000_003 + epoch)
            started = time.perf_counter()
            model.train()
            with unchecked_arguments():  # the images were checked above
                train_terms = _train_epoch(
                    model, optimizer, train, train_rows, batch_size=batch_size,
                    binarize=binarize, beta=beta,
                    warmup_steps=warmup_epochs * steps_per_epoch,
                    step_offset=(epoch - 1) * steps_per_epoch, terms_of=terms_of,
                    epoch=epoch, bar=bar)
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
