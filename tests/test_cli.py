"""``python -m vae_course``: flags, errors, files written, resuming, evaluating.

Most tests call :func:`vae_course.cli.main` in-process on a small synthetic data
set (``load_mnist`` replaced); one runs the real command end to end on MNIST when
``VAE_COURSE_DATA`` points at it, and one starts ``python -m vae_course --help``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from vae_course import cli
from vae_course.checkpoints import load_checkpoint, restore_optimizer, save_checkpoint
from vae_course.data import DataNotFoundError
from vae_course.models import build_vae

REPO = Path(__file__).resolve().parents[1]
TINY = ["--latent-dim", "2", "--hidden-sizes", "16", "--batch-size", "50",
        "--device", "cpu", "--no-progress"]
ELBO_LINE = re.compile(r"^validation -ELBO: (\d+\.\d\d) nats \(epoch (\d+)\); "
                       r"best (\d+\.\d\d) at epoch (\d+), kept in .*best\.pt$")
LOG_P = re.compile(r"^(-\d+\.\d\d) nats, standard error \d+\.\d\d "
                   r"\(K=(\d+) importance samples, \d+ s\)$")


def synthetic_split(split, dataset="mnist", root=None):
    seed = {"train": 0, "validation": 1, "test": 2}[split]
    generator = torch.Generator().manual_seed(seed)
    count = 200 if split == "train" else 50
    images = torch.rand(count, 784, generator=generator) ** 3
    return images, torch.randint(0, 10, (count,), generator=generator)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Every command here runs on one PyTorch thread, whatever the machine's load.

    The command line picks its threads from the cores other work leaves idle, and
    sums of floats split over two threads round differently from one: runs that a
    test compares number for number must not pick different counts.
    """
    threads = torch.get_num_threads()
    monkeypatch.setenv("VAE_COURSE_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_data(monkeypatch):
    """Replace the MNIST loader by 200 + 50 synthetic images; records the calls."""
    calls = []

    def load(split="train", dataset="mnist", root=None):
        calls.append((split, dataset, root))
        return synthetic_split(split, dataset, root)

    monkeypatch.setattr(cli, "load_mnist", load)
    return calls


def run(argv, capsys):
    """main(argv) -> (exit status, stdout lines, stderr lines)."""
    try:
        status = cli.main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err.splitlines()


def table(out):
    """The rows evaluate prints under its first line, {name: value}, checked to be
    two aligned columns."""
    rows = [re.match(r"^  (\S.*?)(  +)(\S.*)$", line) for line in out[1:]]
    assert all(rows), out
    assert len({row.start(3) for row in rows}) == 1, out  # one column of values
    return {row.group(1): row.group(3) for row in rows}


def negative_elbo(rows, split="test"):
    match = re.match(r"^(\d+\.\d\d) nats \(reconstruction -?\d+\.\d\d, KL "
                     r"\d+\.\d\d\)$", rows[f"{split} -ELBO"])
    assert match, rows
    return float(match.group(1))


def rows_without_seconds(folder):
    rows = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# --- help ---------------------------------------------------------------------

def test_help_names_both_commands(capsys):
    status, out, err = run(["--help"], capsys)
    text = "\n".join(out)
    assert status == 0 and err == []
    assert "usage: python -m vae_course" in text
    assert "variational autoencoder" in text
    for command in ("train", "evaluate"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.MULTILINE), command


def test_train_help_lists_every_flag(capsys):
    status, out, _ = run(["train", "--help"], capsys)
    text = "\n".join(out)
    assert status == 0
    for flag in ("--epochs", "--batch-size", "--latent-dim", "--hidden-sizes", "--lr",
                 "--seed", "--device", "--dataset", "--likelihood", "--data-root",
                 "--output", "--resume", "--overwrite", "--no-progress", "--beta",
                 "--architecture", "--warmup-epochs", "--eval-k", "--iwae-samples",
                 "--channels", "--compile"):
        assert flag in text, flag
    assert "default: 16" in text  # defaults are stated
    assert "continuous_bernoulli" in text and "fashion-mnist" in text


def test_evaluate_help_lists_its_flags(capsys):
    status, out, _ = run(["evaluate", "--help"], capsys)
    text = "\n".join(out)
    assert status == 0
    for flag in ("checkpoint", "--k", "--limit", "--seed", "--device", "--data-root",
                 "--no-progress"):
        assert flag in text, flag


def test_python_dash_m_help_runs():
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "vae_course", "--help"], cwd=REPO,
                            env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "evaluate" in result.stdout
    assert "Traceback" not in result.stderr


# --- bad flags ----------------------------------------------------------------

@pytest.mark.parametrize(("argv", "flag"), [
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "x"], "--epochs"),
    (["train", "--epochs", "1.5"], "--epochs"),
    (["train", "--epochs", "-2"], "--epochs"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--dataset", "cifar"], "--dataset"),
    (["train", "--likelihood", "gauss"], "--likelihood"),
    (["train", "--architecture", "rnn"], "--architecture"),
    (["train", "--latent-dim", "-3"], "--latent-dim"),
    (["train", "--hidden-sizes", "100", "0"], "--hidden-sizes"),
    (["train", "--beta", "-1"], "--beta"),
    (["train", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--eval-k", "-1"], "--eval-k"),
    (["train", "--iwae-samples", "0"], "--iwae-samples"),
    (["train", "--iwae-samples", "2.5"], "--iwae-samples"),
    (["train", "--iwae-samples", "5", "--beta", "2"], "--iwae-samples"),
    (["train", "--iwae-samples", "5", "--warmup-epochs", "1"], "--iwae-samples"),
    (["train", "--seed", "one"], "--seed"),
    (["train", "--device", "cuda"], "--device"),
    (["train", "--device", "gpu"], "--device"),
    (["train", "--resume", "--overwrite"], "--overwrite"),
    (["train", "--output", ""], "--output"),
    (["train", "--epocs", "3"], "--epocs 3; did you mean --epochs?"),
    (["train", "--hiden-sizes=8"], "did you mean --hidden-sizes?"),
    (["evaluate", ""], "checkpoint"),
    (["evaluate", "checkpoint.pt", "--limt", "5"], "did you mean --limit?"),
    (["evaluate", "checkpoint.pt", "--k", "0"], "--k"),
    (["evaluate", "checkpoint.pt", "--limit", "-5"], "--limit"),
    (["evaluate"], "checkpoint"),
    (["fit"], "fit"),
    ([], "COMMAND"),
])
def test_bad_flags_exit_2_with_one_line(argv, flag, capsys, monkeypatch, fake_data,
                                        tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # nothing may be written, even by mistake
    status, out, err = run(argv, capsys)
    assert status == 2
    assert len(err) == 1, err
    assert flag in err[0]
    assert err[0].startswith("python -m vae_course")
    assert out == []
    assert fake_data == []  # refused before any data is read
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_numpy_cannot_take_is_refused(capsys, fake_data, tmp_path, seed):
    status, _, err = run(["train", "--seed", seed, "--epochs", "1", "--output",
                          tmp_path / "run", *TINY], capsys)
    assert status == 2
    assert len(err) == 1 and "--seed" in err[0]
    assert fake_data == []


def test_an_existing_run_is_not_overwritten_by_accident(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    checkpoint = save_checkpoint(folder / "checkpoint.pt", build_vae(latent_dim=2))
    before = checkpoint.read_bytes()
    status, out, err = run(["train", "--output", folder, *TINY], capsys)
    assert status == 2
    assert len(err) == 1
    assert "--resume" in err[0] and "--overwrite" in err[0]
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]
    assert fake_data == []


def test_resume_needs_a_checkpoint(capsys, fake_data, tmp_path):
    status, _, err = run(["train", "--resume", "--output", tmp_path / "none", *TINY],
                         capsys)
    assert status == 2
    assert len(err) == 1 and "--resume" in err[0]
    assert not (tmp_path / "none").exists()


# --- training and evaluating (synthetic data) ---------------------------------

def check_pictures(folder, epoch):
    reconstruction = Image.open(folder / f"reconstruction_{epoch:03d}.png")
    sample = Image.open(folder / f"sample_{epoch:03d}.png")
    # 8 originals over 8 reconstructions; 64 samples in 8 rows (2-pixel padding)
    assert reconstruction.size == (8 * 28 + 9 * 2, 2 * 28 + 3 * 2)
    assert sample.size == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2)


def test_train_writes_every_file_and_reports_the_validation_elbo(capsys, fake_data,
                                                                tmp_path):
    folder = tmp_path / "run"
    status, out, err = run(["train", "--epochs", "2", "--output", folder, *TINY],
                           capsys)
    assert status == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.pt", "checkpoint.pt", "metrics.csv", "metrics.json",
        "reconstruction_001.png",
        "reconstruction_002.png", "sample_001.png", "sample_002.png"]
    assert {split for split, _, _ in fake_data} == {"train", "validation"}
    rows = json.loads((folder / "metrics.json").read_text())
    assert [row["epoch"] for row in rows] == [1, 2]
    with open(folder / "metrics.csv", newline="") as file:
        table = list(csv.DictReader(file))
    losses = [row["validation_loss"] for row in rows]
    assert [float(r["validation_loss"]) for r in table] == losses
    assert set(table[0]) == set(rows[0])
    check_pictures(folder, 2)
    assert out[0].startswith("trained 2 epochs in "), out
    match = ELBO_LINE.match(out[-1])
    assert match, out
    assert float(match.group(1)) == round(rows[-1]["validation_loss"], 2)
    assert match.group(2) == "2"
    best_epoch = losses.index(min(losses)) + 1
    assert float(match.group(3)) == round(min(losses), 2)
    assert int(match.group(4)) == best_epoch
    _, best = load_checkpoint(folder / "best.pt")
    best_rows = best["history"].rows
    assert [row["epoch"] for row in best_rows] == list(range(1, best_epoch + 1))
    model, payload = load_checkpoint(folder / "checkpoint.pt")
    assert model.config == {"architecture": "mlp", "latent_dim": 2,
                            "hidden_sizes": [16], "likelihood": "bernoulli"}
    assert payload["history"].rows == rows


def test_resume_continues_exactly_like_a_straight_run(capsys, fake_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(["train", "--epochs", "2", "--output", straight, *TINY], capsys)[0] == 0
    assert run(["train", "--epochs", "1", "--output", resumed, *TINY], capsys)[0] == 0
    first_epoch = rows_without_seconds(resumed)
    # Only --resume, --epochs and --output: the rest comes from the checkpoint.
    status, out, _ = run(["train", "--resume", "--epochs", "2", "--output", resumed,
                          "--no-progress", "--device", "cpu"], capsys)
    assert status == 0
    assert ELBO_LINE.match(out[-1]).group(2) == "2"
    rows = rows_without_seconds(resumed)
    assert rows[:1] == first_epoch
    assert rows == rows_without_seconds(straight)
    check_pictures(resumed, 2)
    check_pictures(resumed, 1)  # the epochs before --resume keep theirs
    assert out[0].startswith("trained 1 epoch in "), out


def test_a_new_run_takes_the_defaults_of_fit_and_build_vae(capsys, fake_data,
                                                           tmp_path):
    from vae_course.train import fit

    folder = tmp_path / "run"
    status, _, err = run(["train", "--epochs", "1", "--output", folder, "--device",
                          "cpu", "--no-progress"], capsys)
    assert status == 0, err
    torch.manual_seed(0)
    reference = build_vae()
    history = fit(reference, synthetic_split("train")[0],
                  synthetic_split("validation")[0], num_epochs=1, progress=False)
    assert rows_without_seconds(folder) == [
        {k: v for k, v in row.items() if k != "seconds"} for row in history.rows]
    model, _ = load_checkpoint(folder / "best.pt")
    assert model.config == reference.config


def test_an_iwae_run_given_a_kl_weight_is_refused_in_fits_words(capsys, fake_data,
                                                                tmp_path):
    status, _, err = run(["train", "--iwae-samples", "5", "--warmup-epochs", "2",
                          "--output", tmp_path / "run", *TINY], capsys)
    assert status == 2
    assert err[0].startswith("python -m vae_course train: error: --warmup-epochs 2.0 "
                             "--iwae-samples 5: iwae_samples=5 trains on the k-sample")
    assert "no KL term" in err[0]
    assert fake_data == [] and not (tmp_path / "run").exists()


def test_resume_refuses_a_saved_iwae_run_with_a_kl_weight(capsys, fake_data,
                                                         tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0
    path = folder / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["extra"]["settings"].update(iwae_samples=5, beta=2.0)
    torch.save(payload, path)
    fake_data.clear()
    status, _, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--no-progress"], capsys)
    assert status == 1
    assert err[0].startswith(f"error: {path} cannot be resumed") and "KL" in err[0]
    assert fake_data == []


def test_overwrite_starts_again(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "2", "--output", folder, *TINY], capsys)[0] == 0
    status, _, _ = run(["train", "--epochs", "1", "--overwrite", "--latent-dim", "3",
                        "--output", folder, "--hidden-sizes", "16", "--no-progress",
                        "--device", "cpu"], capsys)
    assert status == 0
    model, payload = load_checkpoint(folder / "checkpoint.pt")
    assert model.latent_dim == 3
    assert [row["epoch"] for row in payload["history"].rows] == [1]


def test_overwrite_removes_the_old_runs_files_and_only_those(capsys, fake_data,
                                                            tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "3", "--output", folder, *TINY], capsys)[0] == 0
    (folder / "notes.txt").write_text("mine\n")
    (folder / "sample_old.png").write_text("mine too\n")
    status, _, err = run(["train", "--epochs", "1", "--overwrite", "--output", folder,
                          *TINY], capsys)
    assert status == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.pt", "checkpoint.pt", "metrics.csv", "metrics.json", "notes.txt",
        "reconstruction_001.png", "sample_001.png", "sample_old.png"]
    _, best = load_checkpoint(folder / "best.pt")
    assert len(best["history"]) == 1  # not the old run's best epoch
    assert [row["epoch"] for row in rows_without_seconds(folder)] == [1]


def test_an_overwrite_that_is_refused_loses_nothing(capsys, fake_data, tmp_path,
                                                    monkeypatch):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "2", "--output", folder, *TINY], capsys)[0] == 0
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    status, _, err = run(["train", "--overwrite", "--channels", "4", "--output",
                          folder, *TINY], capsys)
    assert status == 2 and "--channels" in err[0]

    def missing(*args):
        raise DataNotFoundError("MNIST data not found in the test's root")

    monkeypatch.setattr(cli, "load_mnist", missing)
    status, _, err = run(["train", "--overwrite", "--output", folder, *TINY], capsys)
    assert status == 1 and "not found" in err[0]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_a_folder_holding_an_old_runs_pictures_is_refused(capsys, fake_data,
                                                         tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "sample_007.png").write_bytes(b"an old picture")
    status, out, err = run(["train", "--epochs", "1", "--output", folder, *TINY],
                           capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert err[0].endswith(f"error: --output {folder} already holds a run "
                           "(sample_007.png); "
                           "pass --resume to continue it, --overwrite to replace it, "
                           "or choose another --output")
    assert fake_data == []
    assert sorted(p.name for p in folder.iterdir()) == ["sample_007.png"]
    # Files a run does not write do not stop one.
    (folder / "sample_007.png").rename(folder / "notes.txt")
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0


def test_evaluate_given_a_run_folder_scores_its_best_model(capsys, fake_data,
                                                           tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "2", "--output", folder, *TINY], capsys)[0] == 0
    scores = []
    for target in (folder, folder / "best.pt"):
        status, out, err = run(["evaluate", target, "--k", "3", "--no-progress",
                                "--device", "cpu"], capsys)
        assert status == 0, err
        assert out[0].endswith(f"the model in {folder / 'best.pt'}:")
        scores.append(out[1:])
    assert scores[0][:-2] == scores[1][:-2]  # all but the timings and sampling
    assert negative_elbo(table(["", *scores[0]])) == negative_elbo(
        table(["", *scores[1]]))


def test_evaluate_given_another_file_says_it_is_not_a_checkpoint(capsys, fake_data,
                                                                 tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0
    fake_data.clear()
    status, out, err = run(["evaluate", folder / "metrics.csv", "--no-progress"],
                           capsys)
    assert status == 1 and out == []
    assert_one_clean_line(err)
    assert err[0] == (f"error: {folder / 'metrics.csv'} is not a vae-course "
                      "checkpoint (not a file written by torch.save)")
    assert fake_data == []


def test_evaluate_prints_the_log_likelihood_and_the_elbo(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0
    report = tmp_path / "numbers.json"
    status, out, err = run(["evaluate", folder / "checkpoint.pt", "--k", "10",
                            "--limit", "20", "--no-progress", "--device", "cpu",
                            "--json", report], capsys)
    assert status == 0, err
    assert out[0] == (f"mnist test set, 20 images; the model in "
                      f"{folder / 'checkpoint.pt'}:")
    rows = table(out)
    # The model's config as rows of the table, not a Python dict.
    assert {name: rows[name] for name in ("architecture", "latent_dim",
                                          "hidden_sizes", "likelihood")} == {
        "architecture": "mlp", "latent_dim": "2", "hidden_sizes": "16",
        "likelihood": "bernoulli"}
    assert not any("{" in line for line in out), out
    log_p = LOG_P.match(rows["test log p(x)"])
    assert log_p and log_p.group(2) == "10", rows
    numbers = json.loads(report.read_text())
    assert numbers["k"] == 10 and numbers["images"] == 20
    assert numbers["negative_elbo"] == pytest.approx(negative_elbo(rows), abs=0.005)
    assert numbers["log_likelihood"] == pytest.approx(float(log_p.group(1)),
                                                      abs=0.005)
    assert numbers["split"] == "test" and fake_data[-1][0] == "test"


def test_evaluate_gives_a_conditional_model_its_labels(capsys, fake_data, tmp_path):
    from vae_course.evaluate import evaluate_elbo

    torch.manual_seed(0)
    model = build_vae(latent_dim=2, hidden_sizes=(16,), num_classes=10)
    path = save_checkpoint(tmp_path / "conditional.pt", model)
    report = tmp_path / "numbers.json"
    status, out, err = run(["evaluate", path, "--k", "5", "--limit", "20",
                            "--no-progress", "--device", "cpu", "--json", report],
                           capsys)
    assert status == 0, err
    assert LOG_P.match(table(out)["test log p(x|y)"]).group(2) == "5"
    images, labels = synthetic_split("test")
    expected = evaluate_elbo(model, images[:20], labels=labels[:20])["negative_elbo"]
    assert json.loads(report.read_text())["negative_elbo"] == pytest.approx(expected)


def test_evaluate_reads_the_split_it_is_given(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0
    outputs = {}
    for split in ("validation", "test"):
        status, out, err = run(["evaluate", folder / "best.pt", "--k", "5", "--split",
                                split, "--no-progress", "--device", "cpu"], capsys)
        assert status == 0, err
        assert fake_data[-1][0] == split
        assert out[0].startswith(f"mnist {split} set, 50 images")
        rows = table(out)
        assert LOG_P.match(rows[f"{split} log p(x)"]), rows
        outputs[split] = negative_elbo(rows, split)
    # Different images, different numbers.
    assert outputs["validation"] != outputs["test"]


def test_evaluate_reports_a_missing_checkpoint(capsys, fake_data, tmp_path):
    status, _, err = run(["evaluate", tmp_path / "nothing.pt", "--no-progress"], capsys)
    assert status == 1
    assert err[0].startswith("error:") and "no checkpoint" in err[0]


def test_evaluate_reports_a_damaged_checkpoint(capsys, fake_data, tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", build_vae(latent_dim=2))
    path.write_bytes(path.read_bytes()[:1000])
    status, _, err = run(["evaluate", path, "--no-progress"], capsys)
    assert status == 1
    assert err[0].startswith("error:")


def test_missing_data_exits_1_with_a_clear_message(capsys, monkeypatch, tmp_path):
    # A download source that cannot answer: the test never touches the network.
    nowhere = (tmp_path / "no-mirror").as_uri() + "/"
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [nowhere])
    root, folder = tmp_path / "empty-root", tmp_path / "run"
    status, _, err = run(["train", "--data-root", root, "--output", folder,
                          "--no-progress"], capsys)
    message = "\n".join(err)
    assert status == 1
    assert message.startswith("error: MNIST data not found")
    assert str(root) in message and "VAE_COURSE_DATA" in message
    assert "Traceback" not in message
    assert not folder.exists()


# --- the real thing -----------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_on_mnist(capsys, tmp_path, real_data_root):
    folder = tmp_path / "run"
    status, out, err = run(["train", "--epochs", "1", "--output", folder,
                            "--no-progress"], capsys)
    assert status == 0, err
    for name in ("checkpoint.pt", "metrics.csv", "metrics.json",
                 "reconstruction_001.png", "sample_001.png"):
        assert (folder / name).is_file(), name
    check_pictures(folder, 1)
    first = ELBO_LINE.match(out[-1])
    assert first and first.group(2) == "1", out
    assert 80 < float(first.group(1)) < 250  # one epoch: well below 543 (untrained)
    first_row = rows_without_seconds(folder)

    status, out, _ = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--no-progress"], capsys)
    assert status == 0
    second = ELBO_LINE.match(out[-1])
    assert second and second.group(2) == "2"
    assert float(second.group(1)) < float(first.group(1))
    rows = rows_without_seconds(folder)
    assert [row["epoch"] for row in rows] == [1, 2] and rows[:1] == first_row
    assert (folder / "sample_002.png").is_file()

    status, out, _ = run(["evaluate", folder / "checkpoint.pt", "--k", "10",
                          "--limit", "100", "--no-progress"], capsys)
    assert status == 0
    rows = table(out)
    assert 50 < -float(LOG_P.match(rows["test log p(x)"]).group(1)) < 250
    assert 50 < negative_elbo(rows) < 250


# --- resuming continues the run that was saved --------------------------------

def assert_one_clean_line(err):
    assert len(err) == 1, err
    assert "Traceback" not in err[0]


def test_resume_trains_on_the_saved_dataset(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--dataset", "fashion-mnist", "--output",
                folder, *TINY], capsys)[0] == 0
    fake_data.clear()
    status, _, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--no-progress", "--device", "cpu"], capsys)
    assert status == 0, err
    assert {dataset for _, dataset, _ in fake_data} == {"fashion-mnist"}
    _, payload = load_checkpoint(folder / "checkpoint.pt")
    assert payload["extra"]["settings"]["dataset"] == "fashion-mnist"


@pytest.mark.parametrize("flags, flag", [
    (["--lr", "0.01"], "--lr"),
    (["--batch-size", "25"], "--batch-size"),
    (["--beta", "2"], "--beta"),
    (["--warmup-epochs", "1"], "--warmup-epochs"),
    (["--dataset", "mnist"], "--dataset"),
    (["--seed", "7"], "--seed"),
    (["--latent-dim", "3"], "--latent-dim"),
    (["--hidden-sizes", "16", "16"], "--hidden-sizes"),
    (["--likelihood", "continuous_bernoulli"], "--likelihood"),
    (["--architecture", "conv"], "--architecture"),
    (["--iwae-samples", "3"], "--iwae-samples"),
    (["--channels", "8"], "--channels"),
])
def test_resume_refuses_a_flag_that_conflicts_with_the_saved_run(capsys, fake_data,
                                                                 tmp_path, flags, flag):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--dataset", "fashion-mnist", "--output",
                folder, *TINY], capsys)[0] == 0
    before = (folder / "checkpoint.pt").read_bytes()
    fake_data.clear()
    status, out, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                            "--no-progress", *flags], capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert err[0].startswith("python -m vae_course train: error:")
    assert flag in err[0] and "saved" in err[0]
    assert fake_data == []  # refused before any data is read
    assert (folder / "checkpoint.pt").read_bytes() == before


def test_resume_accepts_flags_equal_to_the_saved_settings(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--lr", "0.002", "--output", folder, *TINY],
               capsys)[0] == 0
    status, _, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--lr", "2e-3", *TINY], capsys)
    assert status == 0, err
    assert [row["epoch"] for row in rows_without_seconds(folder)] == [1, 2]


def test_resume_needs_more_epochs_than_were_saved(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "2", "--output", folder, *TINY], capsys)[0] == 0
    fake_data.clear()
    status, _, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--no-progress"], capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert "--epochs" in err[0] and "2" in err[0]
    assert fake_data == []


def test_resume_refuses_a_checkpoint_without_training_settings(capsys, fake_data,
                                                               tmp_path):
    folder = tmp_path / "run"
    save_checkpoint(folder / "checkpoint.pt", build_vae(latent_dim=2))
    status, _, err = run(["train", "--resume", "--output", folder, "--no-progress"],
                         capsys)
    assert status == 1
    assert_one_clean_line(err)
    assert err[0].startswith("error:") and "settings" in err[0]
    assert fake_data == []


# --- expected failures end in one line, never a traceback ----------------------

def test_divergence_is_one_line(capsys, fake_data, tmp_path):
    status, _, err = run(["train", "--epochs", "3", "--lr", "1e3", "--output",
                          tmp_path / "run", *TINY], capsys)
    assert status == 1
    assert_one_clean_line(err)
    assert err[0].startswith("error: training diverged")
    if "epoch 1," in err[0]:  # nothing was saved, so nothing is left behind
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make_output", [
    pytest.param(lambda tmp: (tmp / "file.txt", tmp / "file.txt"), id="a-file"),
    pytest.param(lambda tmp: (tmp / "file.txt", tmp / "file.txt" / "run"),
                 id="under-a-file"),
])
def test_an_output_that_is_not_a_folder_is_refused_before_training(
        capsys, fake_data, tmp_path, make_output):
    existing, output = make_output(tmp_path)
    existing.write_text("notes\n")
    status, _, err = run(["train", "--epochs", "1", "--output", output, *TINY], capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert "--output" in err[0] and str(existing) in err[0]
    assert fake_data == []
    assert existing.read_text() == "notes\n"


def test_an_output_that_cannot_be_written_is_refused_before_training(
        capsys, fake_data, tmp_path, monkeypatch):
    # Root may write anywhere, so refuse the write the way a read-only disk would.
    folder = tmp_path / "read-only"
    folder.mkdir()

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", refuse)
    status, _, err = run(["train", "--epochs", "1", "--output", folder / "run", *TINY],
                         capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert "--output" in err[0] and "Permission denied" in err[0]
    assert fake_data == []
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("make_json", [
    pytest.param(lambda tmp: tmp / "no-such-folder" / "numbers.json", id="no-folder"),
    pytest.param(lambda tmp: tmp, id="a-folder"),
])
def test_a_json_path_that_cannot_be_written_is_refused_before_evaluating(
        capsys, fake_data, tmp_path, make_json):
    path = save_checkpoint(tmp_path / "checkpoint.pt", build_vae(latent_dim=2))
    report = make_json(tmp_path)
    status, out, err = run(["evaluate", path, "--k", "2", "--json", report,
                            "--no-progress", "--device", "cpu"], capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert "--json" in err[0]
    assert out == [] and fake_data == []


def poisoned_checkpoint(tmp_path, change):
    path = save_checkpoint(tmp_path / "checkpoint.pt", build_vae(latent_dim=2))
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("change", [
    lambda payload: payload.pop("history"),
    lambda payload: payload.pop("extra"),
    lambda payload: payload["state_dict"]["encoder.0.bias"].fill_(float("nan")),
    lambda payload: payload.update(history=[{"epoch": "x"}]),
], ids=["no-history", "no-extra", "nan-weights", "bad-history"])
def test_evaluate_refuses_a_broken_checkpoint_in_one_line(capsys, fake_data, tmp_path,
                                                          change):
    path = poisoned_checkpoint(tmp_path, change)
    status, _, err = run(["evaluate", path, "--k", "2", "--no-progress", "--device",
                          "cpu"], capsys)
    assert status == 1
    assert_one_clean_line(err)
    assert err[0].startswith("error:") and str(path) in err[0]


def test_resume_refuses_a_broken_checkpoint_in_one_line(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0
    path = folder / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    del payload["extra"]["settings"]["lr"]
    torch.save(payload, path)
    status, _, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--no-progress"], capsys)
    assert status == 1
    assert_one_clean_line(err)
    assert "lr" in err[0]


def test_a_model_too_large_for_memory_is_one_line(capsys, fake_data, tmp_path):
    # 784 x 4e9 weights are 12.5 TB: refused from their size, before any allocation.
    status, _, err = run(["train", "--epochs", "1", "--hidden-sizes", "4000000000",
                          "--output", tmp_path / "run", "--no-progress", "--device",
                          "cpu"], capsys)
    assert status == 1
    assert_one_clean_line(err)
    assert err[0].startswith("error:") and "memory" in err[0]
    assert fake_data == []


@pytest.mark.parametrize("device", ["meta", "cuda:99", "cpu:x"])
def test_a_device_that_cannot_train_is_a_bad_flag(capsys, fake_data, tmp_path,
                                                  monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    status, _, err = run(["train", "--device", device, "--output", tmp_path / "run"],
                         capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert "--device" in err[0]
    assert fake_data == []


def test_a_write_failing_during_training_is_one_line(capsys, fake_data, tmp_path,
                                                     monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "save_checkpoint", full_disk)
    status, _, err = run(["train", "--epochs", "1", "--output", tmp_path / "run",
                          *TINY], capsys)
    assert status == 1
    assert_one_clean_line(err)
    assert "No space left on device" in err[0]


def test_an_interrupted_run_is_one_line(capsys, fake_data, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", interrupted)
    status, _, err = run(["train", "--epochs", "1", "--output", tmp_path / "run",
                          *TINY], capsys)
    assert status == 130
    assert_one_clean_line(err)
    assert "interrupted" in err[0]


# --- the k-sample bound (IWAE) ---------------------------------------------------

def test_iwae_samples_train_the_k_sample_bound_and_are_saved(capsys, fake_data,
                                                              tmp_path):
    from vae_course.train import fit

    folder = tmp_path / "iwae"
    status, _, err = run(["train", "--epochs", "2", "--iwae-samples", "3", "--output",
                          folder, *TINY], capsys)
    assert status == 0, err
    model, payload = load_checkpoint(folder / "checkpoint.pt")
    assert payload["extra"]["settings"]["iwae_samples"] == 3
    # What fit does with iwae_samples=3 from the same seed, and not the VAE's run.
    rows = rows_without_seconds(folder)
    for iwae_samples, same in [(3, True), (1, False)]:
        torch.manual_seed(0)
        reference = build_vae(latent_dim=2, hidden_sizes=[16])
        history = fit(reference, synthetic_split("train")[0],
                      synthetic_split("validation")[0], num_epochs=2, batch_size=50,
                      seed=0, iwae_samples=iwae_samples, progress=False)
        expected = [{k: v for k, v in row.items() if k != "seconds"}
                    for row in history.rows]
        assert (rows == expected) is same, iwae_samples
    # Resuming keeps the saved k, equal to the flag or without it.
    status, _, err = run(["train", "--resume", "--epochs", "3", "--iwae-samples", "3",
                          "--output", folder, "--no-progress", "--device", "cpu"],
                         capsys)
    assert status == 0, err
    _, payload = load_checkpoint(folder / "checkpoint.pt")
    assert payload["extra"]["settings"]["iwae_samples"] == 3
    assert len(payload["history"]) == 3


def test_a_run_saved_without_iwae_samples_resumes_as_a_vae(capsys, fake_data, tmp_path):
    folder = tmp_path / "run"
    assert run(["train", "--epochs", "1", "--output", folder, *TINY], capsys)[0] == 0
    model, payload = load_checkpoint(folder / "checkpoint.pt")
    settings = dict(payload["extra"]["settings"])
    assert settings.pop("iwae_samples") == 1
    # As a run written before the flag existed saved it.
    optimizer = restore_optimizer(torch.optim.Adam(model.parameters()), payload)
    save_checkpoint(folder / "checkpoint.pt", model, optimizer, payload["history"],
                    settings=settings)
    status, _, err = run(["train", "--resume", "--epochs", "2", "--iwae-samples", "4",
                          "--output", folder, "--no-progress"], capsys)
    assert status == 2 and "--iwae-samples 4 conflicts" in err[0]
    status, _, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                          "--no-progress", "--device", "cpu"], capsys)
    assert status == 0, err
    _, payload = load_checkpoint(folder / "checkpoint.pt")
    assert payload["extra"]["settings"]["iwae_samples"] == 1
    assert len(payload["history"]) == 2


def test_channels_set_the_width_of_a_conv_run_and_are_refused_for_an_mlp(
        capsys, fake_data, tmp_path):
    folder = tmp_path / "conv"
    status, _, err = run(["train", "--epochs", "1", "--architecture", "conv",
                          "--channels", "4", "--latent-dim", "2", "--batch-size",
                          "50", "--device", "cpu", "--no-progress", "--output",
                          folder], capsys)
    assert status == 0, err
    model, _ = load_checkpoint(folder / "best.pt")
    assert model.config["channels"] == 4
    assert model.encoder[1].out_channels == 4 and model.encoder[3].out_channels == 8
    fake_data.clear()
    status, _, err = run(["train", "--epochs", "1", "--channels", "4", "--output",
                          tmp_path / "mlp", *TINY], capsys)
    assert status == 2
    assert_one_clean_line(err)
    assert "--channels" in err[0] and "--hidden-sizes" in err[0]
    assert fake_data == [] and not (tmp_path / "mlp").exists()


def test_compile_trains_through_torch_compile_and_may_change_on_resume(
        capsys, fake_data, graph_compiler, tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    folder = tmp_path / "run"
    status, out, err = run(["train", "--epochs", "1", "--compile", "--output", folder,
                            *TINY], capsys)
    assert status == 0, err
    assert len(graph_compiler) == 1, graph_compiler  # the step's terms, one graph
    status, out, err = run(["train", "--resume", "--epochs", "2", "--output", folder,
                            "--no-progress"], capsys)
    assert status == 0, err
    assert len(graph_compiler) == 1  # the resumed run trained eagerly
    assert [row["epoch"] for row in json.loads(
        (folder / "metrics.json").read_text())] == [1, 2]
