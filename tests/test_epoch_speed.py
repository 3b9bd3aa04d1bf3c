"""benchmarks/epoch_speed.py: the page faults it prints belong to the right loop."""

from __future__ import annotations

import importlib.util
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
