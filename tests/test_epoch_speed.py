"""benchmarks/epoch_speed.py: the page faults it prints belong to the right loop."""

from __future__ import annotations

import importlib.util
import mmap
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "epoch_speed.py"
spec = importlib.util.spec_from_file_location("epoch_speed", SCRIPT)
epoch_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(epoch_speed)


@pytest.mark.skipif(sys.platform == "win32", reason="the resource module is Unix's")
def test_each_contender_is_charged_its_own_page_faults(capsys):
    size = 64 * 2**20

    def fresh_memory():  # 64 MiB mapped anew at each call, every page touched
        # mmap itself, not a tensor: what malloc keeps after earlier tests in this
        # process would let a tensor reuse pages that take no fault.
        with mmap.mmap(-1, size) as memory:
            for offset in range(0, size, mmap.PAGESIZE):
                memory[offset] = 1

    epoch_speed.alternate({"fresh memory": fresh_memory, "nothing": lambda: None},
                          [("fresh memory", "nothing")], epochs=3)
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("minor page faults per epoch"))
    counts = {name: int(count) for name, count
              in re.findall(r"(fresh memory|nothing) (\d+)", line)}
    assert counts["fresh memory"] >= size // mmap.PAGESIZE // 2  # half its pages
    assert counts["nothing"] < 100


def test_the_step_comparison_charges_each_loss_its_own_time(capsys, monkeypatch):
    # A clock that only the losses and the optimizer move: each loss costs what it
    # says, whatever else the machine (or the other test worker) is doing.
    clock = [0.0]
    monkeypatch.setattr(epoch_speed.time, "perf_counter", lambda: clock[0])
    step = torch.optim.Adam.step

    def charged_step(self, *args, **kwargs):  # every optimizer step: 1 ms
        clock[0] += 0.001
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", charged_step)

    def costing(seconds, loss):
        def timed_loss(model, batch):
            clock[0] += seconds
            return loss(model, batch)
        return timed_loss

    results = epoch_speed.compare_steps(
        {"hand-written loss": costing(0.002, epoch_speed.handwritten_loss),
         "slower": costing(0.006, epoch_speed.handwritten_loss),
         "the course's loss": costing(0.003, epoch_speed.course_loss)},
        torch.rand(300, 784), batch_size=100, num_steps=10, warmup_steps=2)
    forward = {name: round(result["forward_us"]) for name, result in results.items()}
    steps = {name: round(result["step_us"]) for name, result in results.items()}
    assert forward == {"hand-written loss": 2000, "slower": 6000,
                       "the course's loss": 3000}
    assert steps == {"hand-written loss": 3000, "slower": 7000,
                     "the course's loss": 4000}
    assert results["slower"]["ratio"] == pytest.approx(7 / 3)
    assert results["hand-written loss"]["ratio"] == 1
    assert "the course's loss: loss 3000 µs, whole step 4000 µs" in \
        capsys.readouterr().out


def test_the_recorded_ratio_is_fits_own_train_seconds_over_the_other_loop(capsys):
    images = torch.rand(200, 784)
    fit_epochs = epoch_speed.FitEpochs(epoch_speed.vc.models.build_vae(), images, 100)
    wall = epoch_speed.alternate({"fit": fit_epochs, "nothing": lambda: None},
                                 [("fit", "nothing")], epochs=3)
    recorded = fit_epochs.history.column("seconds")
    assert len(recorded) == 3 == len(wall["nothing"])
    # Timed from outside, each call also pays fit's entry: more than it records.
    assert all(outside > seconds for outside, seconds
               in zip(wall["fit"], recorded, strict=True))
    wall["nothing"] = [seconds / 2 for seconds in recorded]
    capsys.readouterr()
    epoch_speed.print_recorded_ratio(fit_epochs, wall, "nothing", epochs=3)
    assert "recorded train seconds / nothing: 2.000x" in capsys.readouterr().out
