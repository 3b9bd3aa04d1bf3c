"""Run-time settings every lesson shares: the smoke switch, seeds, device and threads.

The smoke switch (``VAE_COURSE_SMOKE``, else ``CI``) shrinks every :func:`budget`.
PyTorch starts a thread per core, which on a busy server wait on each other, so
:func:`setup` takes only the idle cores unless told a number.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .inputs import check_count, check_number

#: Environment variable that fixes the number of threads (see :func:`set_threads`).
THREADS_ENV_VAR = "VAE_COURSE_THREADS"


def smoke_test() -> bool:
    """True when budgets should shrink (CI, or ``VAE_COURSE_SMOKE=1``)."""
    switch = (os.environ.get("VAE_COURSE_SMOKE", "").strip()
              or os.environ.get("CI", "").strip())  # an empty value counts as unset
    return switch.lower() in {"1", "true", "yes", "on"}


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


def choose_num_threads(cores: int, load: float, requested: int | None = None) -> int:
    """``requested`` if given, else the ``cores`` the ``load`` leaves idle, at least 1:
    on a busy machine more threads would only wait for each other."""
    if requested is not None:
        return check_count("threads", requested)
    check_count("cores", cores)
    load = check_number("load", load, allow_zero=True)
    return max(1, min(cores, round(cores - load)))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(before: list[int], after: list[int]) -> float:
    """Cores kept busy between two readings of /proc/stat's ``cpu`` line: ticks of all
    cores (user, nice, system, idle, iowait, ...), idle and iowait time nobody ran."""
    if len(before) < 5 or len(after) != len(before):
        raise ValueError("expected two readings of /proc/stat's cpu line")
    elapsed = [b - a for a, b in zip(before, after, strict=True)]
    total, idle = sum(elapsed), elapsed[3] + elapsed[4]
    return (total - idle) / total * (os.cpu_count() or 1) if total > 0 else 0.0


def _cpu_ticks() -> list[int]:
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    if not fields or fields[0] != "cpu":
        raise OSError("/proc/stat does not start with the cpu line")
    return [int(value) for value in fields[1:]]


def machine_load(window: float = 0.25) -> float:
    """How many cores other work keeps busy now, over ``window`` seconds; without
    /proc/stat the load average (which counts this process's own work too), or 0."""
    try:
        before = _cpu_ticks()
        time.sleep(window)
        return busy_cores(before, _cpu_ticks())
    except (OSError, ValueError):
        pass
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return 0.0


def set_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads and return them: ``threads``, else
    ``$VAE_COURSE_THREADS``, else the idle cores (:func:`choose_num_threads`)."""
    text = os.environ.get(THREADS_ENV_VAR, "").strip()
    if threads is None and text:
        try:
            threads = check_count(THREADS_ENV_VAR, int(text))
        except ValueError:
            raise ValueError(f"{THREADS_ENV_VAR} must be a positive integer; "
                             f"got {text!r}") from None
    chosen = choose_num_threads(usable_cores(), machine_load(), threads)
    torch.set_num_threads(chosen)
    return chosen


def map_in_threads(function, items, threads: int):
    """Yield ``function(item)`` for ``items`` in order, from ``threads`` threads of one
    PyTorch thread each (small operations side by side beat each one split up)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    grad_enabled = torch.is_grad_enabled()

    def run(item):  # grad mode is per thread: the caller's in every one
        with torch.set_grad_enabled(grad_enabled):
            return function(item)

    intra_op_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each new thread starts with
    pool = ThreadPoolExecutor(min(threads, len(items)))
    try:
        futures = [pool.submit(run, item) for item in items]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(cancel_futures=True)
        torch.set_num_threads(intra_op_threads)  # PyTorch has its threads again


def setup(seed: int = 0, device: str | torch.device | None = None,
          precision: int = 4, verbose: bool = True,
          threads: int | None = None) -> torch.device:
    """One call at the top of every lesson: seeds, determinism, device, ``threads``
    (by default the idle cores). Returns the device the lesson should use."""
    # cuBLAS needs this workspace setting before deterministic kernels can be used.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    num_threads = set_threads(threads)
    torch.set_printoptions(precision=precision, sci_mode=False)
    np.set_printoptions(precision=precision, suppress=True)
    chosen = torch.device(device) if device is not None else default_device()
    if verbose:
        mode = "smoke (small budgets)" if smoke_test() else "full"
        threads_text = f"{num_threads} thread" + ("s" if num_threads > 1 else "")
        print(f"torch {torch.__version__} | device {chosen} | {threads_text} | "
              f"seed {seed} | run {mode}")
    return chosen
