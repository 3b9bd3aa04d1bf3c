"""Run-time settings every lesson shares: the smoke switch, seeds and the device.

The smoke switch is read here and nowhere else. It is on when the environment
variable ``VAE_COURSE_SMOKE`` is true, or, when that is unset, when ``CI`` is true
(the convention most CI services follow). Lessons never read the environment
themselves; they ask :func:`budget` for epoch counts, subset sizes and samples.

Threads: PyTorch starts one thread per core, and when other processes keep those
cores busy (a classroom of kernels on one server) its threads wait on each other and
an epoch takes many times longer than with fewer threads. :func:`set_threads`, which
:func:`setup` calls, takes the cores this process may use minus the cores that
other work keeps busy right now, at least one. ``setup(threads=N)``, the command
line's ``--threads N`` or the environment variable ``VAE_COURSE_THREADS=N`` choose N
instead.
"""

from __future__ import annotations

import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .inputs import check_count

_TRUE = {"1", "true", "yes", "on"}
#: Environment variable that fixes the number of threads (see :func:`set_threads`).
THREADS_ENV_VAR = "VAE_COURSE_THREADS"


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


def choose_num_threads(cores: int, load: float, requested: int | None = None) -> int:
    """Threads for PyTorch: ``requested`` if given, else the cores left idle by the load.

    ``cores`` is how many cores this process may run on and ``load`` how many of
    them other work keeps busy (the load average). A busy machine gets one thread:
    more would spend their time waiting for each other.
    """
    if requested is not None:
        return check_count("threads", requested)
    check_count("cores", cores)
    if not (isinstance(load, int | float) and math.isfinite(load) and load >= 0):
        raise ValueError(f"load must be a non-negative number; got {load!r}")
    return max(1, min(cores, round(cores - load)))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(before: list[int], after: list[int]) -> float:
    """Cores kept busy between two readings of the ``cpu`` line of ``/proc/stat``.

    Each reading is the line's counters (user, nice, system, idle, iowait, ...), in
    clock ticks summed over every core; idle and iowait ticks are time nobody ran.
    """
    if len(before) < 5 or len(after) != len(before):
        raise ValueError("expected two readings of /proc/stat's cpu line")
    elapsed = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(elapsed)
    if total <= 0:
        return 0.0
    idle = elapsed[3] + elapsed[4]
    return (total - idle) / total * (os.cpu_count() or 1)


def _cpu_ticks() -> list[int]:
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    if not fields or fields[0] != "cpu":
        raise OSError("/proc/stat does not start with the cpu line")
    return [int(value) for value in fields[1:]]


def machine_load(window: float = 0.25) -> float:
    """How many cores other work keeps busy now, measured over ``window`` seconds.

    Where the OS has no ``/proc/stat`` (macOS, Windows) this falls back to the
    one-minute load average, or 0. A fresh measurement, unlike the load average,
    does not count the work this process itself did a moment ago (it is idle while
    it measures).
    """
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


def requested_threads(threads: int | None = None) -> int | None:
    """``threads`` if given, else ``$VAE_COURSE_THREADS`` as an integer, else None."""
    if threads is not None:
        return threads
    text = os.environ.get(THREADS_ENV_VAR, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{THREADS_ENV_VAR} must be a positive integer; got {text!r}")
    return value


def set_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads (see :func:`choose_num_threads`); return them."""
    chosen = choose_num_threads(usable_cores(), machine_load(),
                                requested_threads(threads))
    torch.set_num_threads(chosen)
    return chosen


def map_in_threads(function, items, threads: int):
    """Yield ``function(item)`` for each of ``items`` in order, from ``threads`` threads.

    Each thread runs PyTorch with one intra-op thread. For work made of many small
    operations, pieces side by side on the cores beat each operation split over
    them; PyTorch releases Python's lock while it computes. Grad mode, which is per
    thread, is the caller's in every one. Afterwards PyTorch has its threads again.
    """
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    grad_enabled = torch.is_grad_enabled()

    def run(item):
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
        torch.set_num_threads(intra_op_threads)


def setup(seed: int = 0, device: str | torch.device | None = None,
          precision: int = 4, verbose: bool = True,
          threads: int | None = None) -> torch.device:
    """One call at the top of every lesson: seeds, determinism, device, threads.

    ``threads`` fixes PyTorch's thread count; by default it follows the idle cores
    (:func:`set_threads`). Returns the device the lesson should use.
    """
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
