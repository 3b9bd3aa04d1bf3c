"""Save a model with what it takes to rebuild it; load it without running pickles.

A checkpoint is a dictionary of tensors, numbers, strings and lists, written by
``torch.save`` and read back with ``torch.load(weights_only=True)``, which refuses
any pickled object instead of executing it.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from .models import VAE, build_vae
from .runtime import smoke_test
from .train import History

FORMAT = "vae-course-checkpoint/1"
REPO_ROOT = Path(__file__).resolve().parents[1]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, unsafe or mismatched."""


def save_checkpoint(path, model: VAE, optimizer: torch.optim.Optimizer | None = None,
                    history: History | None = None, **extra) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "history": list(history.rows) if history is not None else [],
        "extra": extra,
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name,
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        # mkstemp makes the file private (0600); give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values; it was "
            f"refused and nothing in it was run ({str(error).splitlines()[0]})"
        ) from None
    except Exception as error:  # torch raises many kinds on damaged files
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {error}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vae-course checkpoint ({FORMAT})")
    return payload


def load_checkpoint(path, device=None):
    """Rebuild the model saved at ``path``; returns ``(model, payload)``.

    ``payload["history"]`` is the saved :class:`History`; to resume training, build
    an optimizer for the model and call :func:`restore_optimizer`.
    """
    path = Path(path)
    payload = _read(path)
    try:
        model = build_vae(**payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} does not match the architecture it describes: {error}"
        ) from None
    model.to(device or "cpu").eval()
    payload["history"] = History(list(payload["history"]))
    return model, payload


def restore_optimizer(optimizer: torch.optim.Optimizer, payload: dict):
    """Give ``optimizer`` the state saved in a checkpoint's payload."""
    if payload.get("optimizer") is None:
        raise CheckpointError("this checkpoint was saved without an optimizer state")
    optimizer.load_state_dict(payload["optimizer"])
    return optimizer


def load_weights_into(model: VAE, path) -> VAE:
    """Load a checkpoint's weights into an existing model of the same architecture."""
    path = Path(path)
    payload = _read(path)
    if payload["config"] != model.config:
        raise CheckpointError(
            f"{path} was saved from {payload['config']}, not {model.config}"
        )
    model.load_state_dict(payload["state_dict"])
    return model


def course_checkpoint(name: str) -> Path:
    """Where the lessons keep the model called ``name``.

    A full run uses ``checkpoints/NAME.pt`` in the repository (small files,
    committed, so that later lessons start at once). Under the smoke switch the
    lessons train tiny models, which go to the ignored ``runs/smoke/`` instead so
    they never replace the committed ones.
    """
    folder = REPO_ROOT / ("runs/smoke" if smoke_test() else "checkpoints")
    return folder / f"{name}.pt"


def trained_checkpoint(name: str) -> Path:
    """Where a lesson saves a model it trains itself: ``runs/NAME.pt``.

    ``runs/`` is ignored by git, so running a lesson never rewrites a committed file
    (the models in ``checkpoints/`` are inputs only) and a learner's next
    ``git pull`` cannot conflict with it. ``VAE_COURSE_RUNS`` moves the folder
    (``make course`` points it into ``build/``); the smoke switch uses its
    ``smoke/`` subfolder, which ``make test`` empties first.
    """
    folder = Path(os.environ.get("VAE_COURSE_RUNS") or REPO_ROOT / "runs")
    if smoke_test():
        folder = folder / "smoke"
    return folder / f"{name}.pt"


def load_or_train(name: str, train, device=None):
    """Load the course model ``name``, or call ``train()`` and save what it returns.

    ``train`` takes no arguments and returns ``(model, history)``. The result is
    ``(model, payload)`` as from :func:`load_checkpoint`. The model the learner
    trained (:func:`trained_checkpoint`, say by running lesson 04) comes first, then
    the committed one (:func:`course_checkpoint`), which is only read; a model
    trained here is saved under ``runs/``, never over a committed file.
    """
    trained = trained_checkpoint(name)
    for path in (trained, course_checkpoint(name)):
        if path.exists():
            return load_checkpoint(path, device)
    model, history = train()
    save_checkpoint(trained, model, history=history)
    return load_checkpoint(trained, device)
