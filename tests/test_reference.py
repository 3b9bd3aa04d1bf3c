"""benchmarks/reference.py: the README's reference table says what it measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference.py"
spec = importlib.util.spec_from_file_location("reference", SCRIPT)
reference = importlib.util.module_from_spec(spec)
sys.modules["reference"] = reference  # dataclasses look their module up there
spec.loader.exec_module(reference)


def row(name="best", log_likelihood=-87.30, standard_error=0.12, target=86.76):
    return {"name": name, "description": "a model", "target": target,
            "epochs_trained": 250, "chosen_epoch": 231, "train_seconds": 3000.0,
            "machine": "CPU, 2 threads (x86_64)", "validation_negative_elbo": 93.1,
            "negative_elbo": 93.4, "log_likelihood": log_likelihood,
            "standard_error": standard_error, "images": 10_000}


def test_shortfall_says_by_how_much_in_nats_and_standard_errors():
    assert reference.shortfall(87.30, 0.12, 86.76) == \
        "86.76: short by 0.54 nats (4.5 standard errors)"
    assert reference.shortfall(86.50, 0.13, 86.76) == \
        "86.76: beats it by 0.26 nats (2.0 standard errors)"
    assert reference.shortfall(100.0, 1.0, None) == "–"


def test_the_table_states_images_k_the_chosen_epoch_and_the_target():
    text = reference.table([row(), row("default", -102.5, 0.3, None)], k=5000)
    assert "10000 test images" in text and "K=5000" in text
    assert "validation images" in text
    best = next(line for line in text.splitlines() if line.startswith("| best"))
    cells = [cell.strip() for cell in best.strip("|").split("|")]
    assert cells[1] == "250 (231)"
    assert cells[2] == "50.0 min on CPU, 2 threads (x86_64)"
    assert cells[5] == "87.30 ± 0.12"
    assert cells[6].startswith("86.76: short by 0.54")
    assert "Burda et al. 2016" in text and "86.76" in text and "84.78" in text


def test_every_model_is_described_and_trainable_from_the_cli():
    from vae_course.cli import build_parser

    for name, model in reference.MODELS.items():
        assert model.description and model.epochs > 0
        args = build_parser().parse_args(["train", *model.flags])
        assert args.command == "train", name


@pytest.mark.parametrize("pairs", [["best"], ["nothing=3"], ["best=0"], ["best=x"]])
def test_bad_epoch_pairs_are_refused(pairs):
    with pytest.raises(SystemExit, match="NAME=N"):
        reference.parse_epochs(pairs)


def test_epoch_pairs_are_read():
    assert reference.parse_epochs(["best=300", "default=2"]) == {"best": 300,
                                                                 "default": 2}
