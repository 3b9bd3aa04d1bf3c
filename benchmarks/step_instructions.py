"""Instructions per training step of ``vc.train.fit`` and of the hand-written loop.

Seconds move with the load of a shared machine, by more than the few percent that
separate ``fit`` from the hand-written loop of ``epoch_speed.py``; the instructions
a CPU executes do not. This script runs itself under Valgrind's callgrind, which
counts them, and marks where each contender's epoch starts and ends: an epoch of
``fit`` (entry checks included), of the hand-written loop, and of the same loop
training a second model (the control, which should land at 1.000x). With only 10
steps an epoch, fit's entry checks weigh more than in a real epoch of 500 steps.
It needs ``valgrind`` with its headers and a C compiler, and takes about twelve
minutes, a quarter of them PyTorch's import on Valgrind's simulated CPU. That CPU
has no AVX-512, so PyTorch runs its AVX2 kernels there. A count is not a time (a
cache miss costs more than an add); it measures the work, the one part of a step
the load cannot blur.

    python benchmarks/step_instructions.py --steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Callgrind's client requests, compiled into a library this process loads.
MARKS_SOURCE = """
#include <valgrind/callgrind.h>
void zero_counts(void) { CALLGRIND_ZERO_STATS; }
void dump_counts(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""
CONTENDERS = ("vc.train.fit", "hand-written loop", "control (hand-written, 2nd model)")


def build_marks(folder: Path) -> Path:
    source, library = folder / "marks.c", folder / "libmarks.so"
    source.write_text(MARKS_SOURCE)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("step_instructions.py needs a C compiler (cc or gcc)")
    built = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library),
                            str(source)], capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit("could not build the callgrind marks (are Valgrind's headers, "
                 f"valgrind/callgrind.h, installed?):\n{built.stderr}")
    return library


def count_under_callgrind(args) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("step_instructions.py needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        library = build_marks(folder)
        command = ["valgrind", "--tool=callgrind", "--cache-sim=no", "--dump-instr=no",
                   f"--callgrind-out-file={folder / 'counts'}", sys.executable,
                   __file__, "--marks", str(library), "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
        print(f"running {args.repeats} epoch(s) of {args.steps} steps of each loop "
              "under callgrind (about twelve minutes)...", flush=True)
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"the run under valgrind failed:\n{run.stderr[-3000:]}")
        counts = read_dumps(folder)
    report(counts, args.steps)


def read_dumps(folder: Path) -> dict[str, list[int]]:
    """Each contender's instruction counts, one per epoch, from callgrind's dumps."""
    counts = {name: [] for name in CONTENDERS}
    for dump in sorted(folder.glob("counts.*"), key=lambda path: int(path.suffix[1:])):
        text = dump.read_text()
        trigger = re.search(r"^desc: Trigger: Client Request: (.+)$", text, re.M)
        total = re.search(r"^summary: (\d+)$", text, re.M)
        if trigger and total and trigger[1] in counts:
            counts[trigger[1]].append(int(total[1]))
    if not all(counts.values()):
        sys.exit(f"callgrind wrote no counts for some loops: {counts}")
    return counts


def report(counts: dict[str, list[int]], steps: int) -> None:
    hand = counts["hand-written loop"]
    for name, values in counts.items():
        per_step = statistics.median(values) / steps
        ratios = [value / base for value, base in zip(values, hand, strict=True)]
        print(f"{name}: {per_step / 1e6:.3f} million instructions a step; / "
              f"hand-written loop {', '.join(f'{ratio:.4f}x' for ratio in ratios)}")


def count_epochs(args) -> None:
    """Run under callgrind: the marked epochs, after two unmarked epochs of each."""
    import torch
    from epoch_speed import FitEpochs, handwritten_epoch

    import vae_course as vc

    marks = ctypes.CDLL(args.marks)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images, _ = vc.data.load_mnist("train")
    images = images[:args.steps * args.batch_size].contiguous()

    def hand_loop():
        model = vc.models.build_vae()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        return lambda: handwritten_epoch(model, optimizer, images, args.batch_size)

    epochs = dict(zip(CONTENDERS, (FitEpochs(vc.models.build_vae(), images,
                                             args.batch_size),
                                   hand_loop(), hand_loop()), strict=True))
    for run_epoch in [*epochs.values()] * 2:
        run_epoch()  # allocations and first calls, left out of the counts
    for _ in range(args.repeats):
        for name, run_epoch in epochs.items():
            # A full collection sweeps every object of the process (PyTorch's
            # hundreds of thousands): in whichever epoch it fell, it would swamp the
            # difference. Collected here, each epoch counts its own garbage only.
            gc.collect()
            marks.zero_counts()
            run_epoch()
            marks.dump_counts(name.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps an epoch")
    parser.add_argument("--repeats", type=int, default=2, help="epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--marks", help=argparse.SUPPRESS)  # set for the run inside
    args = parser.parse_args()
    if args.marks:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        count_epochs(args)
    else:
        count_under_callgrind(args)


if __name__ == "__main__":
    main()
