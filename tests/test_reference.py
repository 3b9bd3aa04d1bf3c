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


def saved_model(folder, name="default"):
    """A tiny checkpoint with a two-epoch history, and its note with an evaluation."""
    import json

    import torch

    from vae_course.checkpoints import save_checkpoint
    from vae_course.models import build_vae
    from vae_course.train import History

    torch.manual_seed(0)
    history = History([{"epoch": 1, "validation_loss": 120.0},
                       {"epoch": 2, "validation_loss": 110.5}])
    chosen = save_checkpoint(folder / f"{name}.pt",
                             build_vae(hidden_sizes=(8,), latent_dim=2),
                             history=history)
    evaluation = {"log_likelihood": -104.2, "standard_error": 0.4, "k": 5000,
                  "images": 10_000, "negative_elbo": 109.9,
                  "checkpoint_sha256": reference.digest(chosen)}
    note = {"epochs_trained": 16, "train_seconds": 60.0,
            "machine": "CPU, 1 thread (x86_64)", "evaluation": evaluation}
    (folder / f"{name}.json").write_text(json.dumps(note))
    return chosen


def test_a_row_comes_from_the_checkpoint_and_the_evaluation_in_its_note(tmp_path):
    saved_model(tmp_path)
    row = reference.table_row("default", reference.MODELS["default"], tmp_path)
    assert row["chosen_epoch"] == 2 and row["validation_negative_elbo"] == 110.5
    assert row["log_likelihood"] == -104.2 and row["epochs_trained"] == 16
    assert "checkpoint_sha256" not in row
    line = next(line for line in reference.table([row], k=5000).splitlines()
                if line.startswith("| default"))
    assert "| 16 (2) |" in line and "104.20 ± 0.40" in line


def test_a_note_of_another_checkpoint_or_without_an_evaluation_is_refused(tmp_path):
    import json

    import torch

    chosen = saved_model(tmp_path)
    payload = torch.load(chosen, weights_only=False)
    payload["extra"] = {"changed": True}
    torch.save(payload, chosen)  # the checkpoint changed after its evaluation
    with pytest.raises(SystemExit, match="another file"):
        reference.table_row("default", reference.MODELS["default"], tmp_path)
    note = json.loads((tmp_path / "default.json").read_text())
    del note["evaluation"]
    (tmp_path / "default.json").write_text(json.dumps(note))
    with pytest.raises(SystemExit, match="no evaluation"):
        reference.table_row("default", reference.MODELS["default"], tmp_path)
    with pytest.raises(SystemExit, match="train the model first"):
        reference.table_row("best", reference.MODELS["best"], tmp_path)


def test_the_committed_notes_match_their_checkpoints():
    for chosen in sorted(reference.COMMITTED.glob("*.pt")):
        row = reference.table_row(chosen.stem, reference.MODELS[chosen.stem],
                                  reference.COMMITTED)
        assert row["images"] == 10_000 and row["k"] == 5000, chosen.name


def test_the_readme_table_is_the_one_the_committed_notes_give():
    rows = [reference.table_row(name, model, reference.COMMITTED)
            for name, model in reference.MODELS.items()
            if (reference.COMMITTED / f"{name}.pt").is_file()]
    assert rows, "no committed reference models"
    readme = (reference.REPO / "README.md").read_text()
    inside = readme.split(reference.START, 1)[1].split(reference.END, 1)[0]
    assert inside.strip() == reference.table(rows, 5000).strip()


def test_the_readme_has_one_pair_of_markers_under_reference_results():
    """make reference rewrites what lies between the markers; the FAQ links there."""
    readme = (reference.REPO / "README.md").read_text()
    assert readme.count(reference.START) == 1 and readme.count(reference.END) == 1
    head = readme.split(reference.START, 1)[0]
    assert reference.END not in head, "the end marker comes before the start marker"
    headings = [line for line in head.splitlines() if line.startswith("## ")]
    assert headings and headings[-1] == "## Reference results", (
        "the reference table must stay under the README's ## Reference results")
