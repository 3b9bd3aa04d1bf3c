"""Run-time settings every lesson shares: the smoke switch, seeds and the device.

The smoke switch is read here and nowhere else. It is on when the environment
variable ``VAE_COURSE_SMOKE`` is true, or, when that is unset, when ``CI`` is true
(the convention most CI services follow). Lessons never read the environment
themselves; they ask :func:`budget` for epoch counts, subset sizes and samples.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_TRUE = {"1", "true", "yes", "on"}


def smoke_test() -> bool:
    """True when budgets should shrink (CI, or ``VAE_COURSE_SMOKE=1``)."""
    explicit = os.environ.get("VAE_COURSE_SMOKE")
    if explicit is not None and explicit.strip() != "":
        return explicit.strip().lower() in _TRUE
    return os.environ.get("CI", "").strip().lower() in _TRUE


def budget(full, smoke):
    """Return ``full`` on a normal run and ``smoke`` under the smoke switch."""
    return smoke if smoke_test() else full


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (every device) with one number."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0, device: str | torch.device | None = None,
          precision: int = 4, verbose: bool = True) -> torch.device:
    """One call at the top of every lesson: seeds, determinism, device, printing.

    Returns the device the lesson should use.
    """
    # cuBLAS needs this workspace setting before deterministic kernels can be used.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    torch.set_printoptions(precision=precision, sci_mode=False)
    np.set_printoptions(precision=precision, suppress=True)
    chosen = torch.device(device) if device is not None else default_device()
    if verbose:
        mode = "smoke (small budgets)" if smoke_test() else "full"
        print(f"torch {torch.__version__} | device {chosen} | seed {seed} | run {mode}")
    return chosen
