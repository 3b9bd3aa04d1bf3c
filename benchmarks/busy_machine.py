"""What a busy machine costs a training run, for each number of PyTorch threads.

Times ``vc.train.fit`` on a slice of MNIST (the default model, batch 100) with one
thread and with one per core, first as the machine is, then while this script keeps
every core busy with spinning processes of its own. Each time is a median of the
repeats, alternating the thread counts; the busy/quiet ratio is what to read. With
a core per thread a busy run should take about twice its quiet time (each thread
shares its core with one spinner); a thread pool whose threads wait on each other
takes many times longer. It also prints what ``vc.runtime.set_threads`` picks
while the spinners run (it measures the busy cores, as ``vc.setup`` does).

    python benchmarks/busy_machine.py --steps 100 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch
from results import Results

import vae_course as vc

results = Results("busy_machine")


def spin() -> None:
    while True:
        pass


def train_seconds(images: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = vc.models.build_vae()
    started = time.perf_counter()
    vc.train.fit(model, images, num_epochs=1, batch_size=100, progress=False)
    return time.perf_counter() - started


def medians(images, thread_counts, repeats) -> dict[int, float]:
    times = {threads: [] for threads in thread_counts}
    for _ in range(repeats):
        for threads in thread_counts:
            times[threads].append(train_seconds(images, threads))
    return {threads: statistics.median(seconds) for threads, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vc.setup(seed=0, verbose=False)
    images, _ = vc.data.load_mnist("train")
    images = images[:100 * args.steps]
    cores = vc.runtime.usable_cores()
    thread_counts = sorted({1, cores})
    background = vc.runtime.machine_load()
    say = results.say
    say(f"{cores} usable cores, {background:.1f} busy before the spinners; "
        f"{args.steps} steps per run, median of {args.repeats}")
    quiet = medians(images, thread_counts, args.repeats)
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(cores)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(1.0)
        # What vc.setup would pick now: the spinners keep every core busy.
        chosen = vc.runtime.choose_num_threads(cores, vc.runtime.machine_load())
        busy = medians(images, thread_counts, args.repeats)
    finally:
        for spinner in spinners:
            spinner.terminate()
        for spinner in spinners:
            spinner.join()
    for threads in thread_counts:
        say(f"{threads} thread(s): {quiet[threads]:.2f} s as the machine was, "
            f"{busy[threads]:.2f} s with {cores} spinners: "
            f"{busy[threads] / quiet[threads]:.1f}x")
    say(f"with the spinners running, set_threads picks {chosen} "
        f"thread(s): {busy[chosen] / quiet[chosen]:.1f}x its time before them, "
        f"{busy[chosen] / quiet[cores]:.1f}x the time of {cores} thread(s) before")
    results.write()


if __name__ == "__main__":
    main()
