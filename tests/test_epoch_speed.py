"""benchmarks/epoch_speed.py: the page faults it prints belong to the right loop."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "epoch_speed.py"
spec = importlib.util.spec_from_file_location("epoch_speed", SCRIPT)
epoch_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(epoch_speed)


@pytest.mark.skipif(sys.platform == "win32", reason="the resource module is Unix's")
def test_each_contender_is_charged_its_own_page_faults(capsys):
    def fresh_memory():  # 64 MiB, more than malloc keeps: mapped anew at each call
        torch.ones(16 * 2**20)

    epoch_speed.alternate({"fresh memory": fresh_memory, "nothing": lambda: None},
                          [("fresh memory", "nothing")], epochs=3)
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("minor page faults per epoch"))
    counts = {name: int(count) for name, count
              in re.findall(r"(fresh memory|nothing) (\d+)", line)}
    assert counts["fresh memory"] >= 16 * 2**20 * 4 // 4096 // 2  # half its pages
    assert counts["nothing"] < 100


def test_the_step_comparison_charges_each_loss_its_own_time(capsys):
    images = torch.rand(300, 784)

    def slower_loss(model, batch):  # the hand-written loss and 2 ms more
        time.sleep(0.002)
        return epoch_speed.handwritten_loss(model, batch)

    results = epoch_speed.compare_steps(
        {"hand-written loss": epoch_speed.handwritten_loss, "slower": slower_loss,
         "the course's loss": epoch_speed.course_loss},
        images, batch_size=100, num_steps=10, warmup_steps=2)
    hand, slower = results["hand-written loss"], results["slower"]
    assert slower["forward_us"] - hand["forward_us"] >= 1500
    assert slower["step_us"] - hand["step_us"] >= 1500
    assert slower["ratio"] > 1 and hand["ratio"] == 1
    assert all(result["forward_us"] < result["step_us"] for result in results.values())
    assert "the course's loss: loss" in capsys.readouterr().out
