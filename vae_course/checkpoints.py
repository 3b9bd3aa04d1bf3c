"""Save a model with what it takes to rebuild it; load it without running pickles.

A checkpoint is a dict of tensors, numbers, strings and lists, read back with
``torch.load(weights_only=True)``, which refuses any pickled object instead of
running it.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import torch

from .models import VAE, build_vae
from .runtime import smoke_test
from .train import History

FORMAT = "vae-course-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, damaged, unsafe or mismatched."""


# What torch.load(weights_only=True) reads back, besides None, tensors and
# containers; bool before int, since a bool is an int.
_PLAIN = (str, bool, int, float)
# Each entry of a checkpoint and what it must be.
_ENTRIES = {"config": dict, "state_dict": dict, "optimizer": (dict, type(None)),
            "history": list, "extra": dict}


def _plain(value, where: str):
    """``value`` in the types a safe load accepts, or a TypeError naming ``where``:
    no checkpoint is written that :func:`load_checkpoint` cannot read."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic):  # before float: np.float64 is a float too
        return value.item()
    if value is None:
        return None
    for kind in _PLAIN:  # subclasses (enums, ...) become the plain type itself
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        items = [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(f"{where} has the key {key!r}; checkpoint keys must "
                                "be strings or integers")
        return {key: _plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot "
                    "hold; store tensors, numbers, strings, lists and dicts")


def _history_problem(rows) -> str | None:
    """What is wrong with a list of history rows, or None: numbers, epochs 1..n."""
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            return f"row {number} is a {type(row).__name__}, not a dict"
        for key, value in row.items():
            if not isinstance(key, str):
                return f"row {number} has the key {key!r}, not a string"
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"row {number} holds {key}={value!r}, not a number"
        if row.get("epoch") != number:
            return f"row {number} must be epoch {number}, not {row.get('epoch')!r}"
    return None


def _non_finite(state_dict: dict) -> str | None:
    """The first floating-point tensor holding NaN or infinity, by name."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            return f"{name} holds {kind} weights"
    return None


def save_checkpoint(path, model: VAE, optimizer: torch.optim.Optimizer | None = None,
                    history: History | None = None, **extra) -> Path:
    """Write ``path`` atomically: a temporary file in its folder, then a rename.

    ``extra`` may hold tensors, numbers, strings, lists, tuples and dicts; numpy
    scalars become numbers and paths strings."""
    path = Path(path)
    if history is not None and not isinstance(history, History):
        raise TypeError(f"history must be a History; got {type(history).__name__}")
    rows = _plain(list(history.rows) if history is not None else [], "history")
    if problem := _history_problem(rows):
        raise ValueError(f"history cannot be saved: {problem}")
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if problem := _non_finite(state_dict):
        raise ValueError(f"the model cannot be saved: {problem}")
    payload = {"format": FORMAT, "config": _plain(dict(model.config), "config"),
               "state_dict": state_dict,
               "optimizer": optimizer.state_dict() if optimizer is not None else None,
               "history": rows, "extra": _plain(extra, "extra")}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:  # a new file, with the usual permissions
            torch.save(payload, file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> tuple[dict, VAE]:
    """The payload at ``path``, every entry checked, and the model its config builds
    on the meta device (which allocates nothing), checked against the weights."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds on damaged files
        raise CheckpointError(_unreadable(path, error)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vae-course checkpoint ({FORMAT})")
    for entry, kind in _ENTRIES.items():
        if entry not in payload:
            raise CheckpointError(f"{path} lacks its {entry!r} entry (damaged, or "
                                  "not written by save_checkpoint)")
        if not isinstance(payload[entry], kind):
            raise CheckpointError(f"{path} has a malformed {entry!r} entry "
                                  f"(a {type(payload[entry]).__name__})")
    for name, tensor in payload["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path} has a malformed state_dict: {name!r} is "
                                  f"a {type(tensor).__name__}, not a tensor")
    if problem := _non_finite(payload["state_dict"]):
        raise CheckpointError(f"{path} is not usable: {problem} (saved from a "
                              "model whose training diverged?)")
    if problem := _history_problem(payload["history"]):
        raise CheckpointError(f"{path} has a malformed history: {problem}")
    try:
        with torch.device("meta"):
            skeleton = build_vae(**payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} describes a model that cannot be built: {error}") from None
    expected, found = skeleton.state_dict(), payload["state_dict"]
    if expected.keys() != found.keys():
        missing = [name for name in expected if name not in found]
        unexpected = [name for name in found if name not in expected]
        raise CheckpointError(f"{path} does not match the architecture it describes: "
                              f"the file lacks {missing} and has {unexpected} beyond "
                              "what the config needs")
    for name, tensor in expected.items():
        if found[name].shape != tensor.shape:
            raise CheckpointError(f"{path} does not match the architecture it "
                                  f"describes: {name} has shape "
                                  f"{tuple(found[name].shape)} in the file, but the "
                                  f"config needs {tuple(tensor.shape)}")
    return payload, skeleton


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load refused ``path``, in words that fit the file, not torch's."""
    try:
        with open(path, "rb") as file:
            start = file.read(4)
    except OSError as failure:
        return f"{path} cannot be read ({failure.strerror or failure})"
    # torch.save writes a zip archive; torch before 1.6 wrote a pickle.
    if not start.startswith((b"PK\x03\x04", b"\x80")):  # a CSV, a web page, ...
        return (f"{path} is not a vae-course checkpoint (not a file written by "
                "torch.save)")
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, pickle.UnpicklingError):
        return (f"{path} holds objects other than tensors and plain values; it was "
                f"refused and nothing in it was run ({reason})")
    return f"{path} is not a readable checkpoint (truncated or damaged?): {reason}"


def load_checkpoint(path, device=None):
    """Rebuild the model saved at ``path``; returns ``(model, payload)``, with the
    saved :class:`History` in ``payload["history"]``."""
    payload, _ = _read(Path(path))
    model = build_vae(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.to(device or "cpu").eval()
    payload["history"] = History(list(payload["history"]))
    return model, payload


def restore_optimizer(optimizer: torch.optim.Optimizer, payload: dict):
    """Give ``optimizer`` the state saved in a checkpoint's payload."""
    if payload.get("optimizer") is None:
        raise CheckpointError("this checkpoint was saved without an optimizer state")
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
        raise CheckpointError("the optimizer state in this checkpoint does not fit "
                              f"the model: {error}") from None
    return optimizer


def load_weights_into(model: VAE, path) -> VAE:
    """Load a checkpoint's weights into an existing model of the same architecture."""
    payload, saved = _read(Path(path))
    if saved.config != model.config:
        raise CheckpointError(f"{path} was saved from {saved.config}, not "
                              f"{model.config}")
    model.load_state_dict(payload["state_dict"])
    return model


def course_checkpoint(name: str) -> Path:
    """The committed course model ``checkpoints/NAME.pt``, only ever read.

    Looked for in the working directory and each folder above it, so that lessons find
    it from ``notebooks/``; if none has it, the (absent) path in the working directory.
    Under the smoke switch it is :func:`trained_checkpoint`'s path, so that the tiny
    smoke models never stand in for the committed ones."""
    if smoke_test():
        return trained_checkpoint(name)
    here = Path.cwd()
    paths = [folder / "checkpoints" / f"{name}.pt" for folder in (here, *here.parents)]
    return next((path for path in paths if path.is_file()), paths[0])


def trained_checkpoint(name: str) -> Path:
    """Where a lesson saves a model it trains: ``runs/NAME.pt``, never a committed file.

    ``runs/`` is in the working directory unless ``$VAE_COURSE_RUNS`` names another;
    the smoke switch uses its ``smoke/`` subfolder."""
    folder = Path.cwd() / (os.environ.get("VAE_COURSE_RUNS") or "runs")
    if smoke_test():
        folder = folder / "smoke"
    return folder / f"{name}.pt"


def load_or_train(name: str, train, device=None):
    """Load the course model ``name``, or call ``train()`` and save what it returns.

    ``train()`` returns ``(model, history)``; the result is ``(model, payload)``. The
    learner's own model (:func:`trained_checkpoint`) comes before the committed one."""
    trained = trained_checkpoint(name)
    for path in (trained, course_checkpoint(name)):
        if path.exists():
            return load_checkpoint(path, device)
    model, history = train()
    save_checkpoint(trained, model, history=history)
    return load_checkpoint(trained, device)
