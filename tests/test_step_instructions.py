"""benchmarks/step_instructions.py: callgrind's dumps read back as the right counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_instructions.py"
spec = importlib.util.spec_from_file_location("step_instructions", SCRIPT)
step_instructions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_instructions)
FIT, HAND, CONTROL = step_instructions.CONTENDERS


def write_dump(folder: Path, number: int, name: str, total: int) -> None:
    (folder / f"counts.{number}").write_text(
        f"version: 1\ncreator: callgrind-3.19.0\npid: 7\ncmd: python\npart: {number}\n"
        f"desc: Trigger: Client Request: {name}\nevents: Ir\nsummary: {total}\n")


def test_dumps_are_read_in_their_order_and_by_contender(tmp_path):
    # Eleven dumps, so that a name-ordered reading would put counts.10 before .2.
    names = [FIT, HAND, CONTROL] * 3 + [FIT, HAND]
    for number, name in enumerate(names, start=1):
        write_dump(tmp_path, number, name, 1000 + number)
    (tmp_path / "counts").write_text("summary: 5\n")  # the dump at exit: no mark
    counts = step_instructions.read_dumps(tmp_path)
    assert counts == {FIT: [1001, 1004, 1007, 1010], HAND: [1002, 1005, 1008, 1011],
                      CONTROL: [1003, 1006, 1009]}


def test_a_contender_without_counts_stops_the_run(tmp_path):
    write_dump(tmp_path, 1, FIT, 10)
    with pytest.raises(SystemExit, match="no counts"):
        step_instructions.read_dumps(tmp_path)


def test_the_report_divides_each_epoch_by_the_hand_written_loops(capsys):
    step_instructions.report({FIT: [2_040_000, 2_060_000], HAND: [2_000_000, 2_000_000],
                              CONTROL: [2_000_000, 2_000_000]}, steps=10)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{FIT}: 0.205 million instructions a step; / hand-written "
                        "loop 1.0200x, 1.0300x")
    assert lines[2].endswith("1.0000x, 1.0000x")

