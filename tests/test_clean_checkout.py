"""Running the course leaves the git checkout clean.

A learner runs the lessons and then pulls the next version of the course; any
tracked file a lesson rewrote would make that pull conflict. Models a lesson trains
go to the ignored ``runs/`` (of the working directory, or ``$VAE_COURSE_RUNS``,
which the Makefile points at the repository's); the committed ``checkpoints/`` are
only read, found from the working directory up; ``make course`` writes under
``build/``. The package never writes into, nor looks for files in, its own folder.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

import vae_course as vc
from vae_course import checkpoints

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "checkpoints").glob("*.pt"))


def git(*args: str) -> str:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                            check=True)
    return result.stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def full_budget(monkeypatch):
    """A learner's run: smoke switch off, runs/ at its default place."""
    monkeypatch.setenv("VAE_COURSE_SMOKE", "0")
    monkeypatch.delenv("VAE_COURSE_RUNS", raising=False)


def tiny_model():
    torch.manual_seed(0)
    model = vc.models.build_vae(hidden_sizes=(8,), latent_dim=2)
    return model, vc.train.History()


@pytest.mark.parametrize("lessons", ["notebooks", "notebooks/solutions"])
def test_load_or_train_reads_a_committed_model_without_touching_it(
        full_budget, monkeypatch, lessons):
    if not COMMITTED:
        pytest.skip("no committed checkpoints")
    name = COMMITTED[0].stem
    monkeypatch.chdir(REPO / lessons)  # where a lesson's kernel starts
    if checkpoints.trained_checkpoint(name).exists():
        pytest.skip(f"{lessons}/runs/ holds a {name}; it would be loaded first")
    assert checkpoints.course_checkpoint(name) == REPO / "checkpoints" / f"{name}.pt"
    before = {path: digest(path) for path in COMMITTED}
    status = git("status", "--porcelain")

    def must_not_train():
        raise AssertionError("trained although a committed model exists")

    model, _ = checkpoints.load_or_train(name, must_not_train)
    assert isinstance(model, torch.nn.Module)
    assert {path: digest(path) for path in COMMITTED} == before
    assert git("status", "--porcelain") == status


def test_a_model_trained_by_a_lesson_goes_to_an_ignored_folder(full_budget,
                                                               monkeypatch):
    name = f"test-clean-checkout-{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(REPO)
    path = checkpoints.trained_checkpoint(name)
    status = git("status", "--porcelain")
    try:
        checkpoints.load_or_train(name, tiny_model)
        assert path.is_file(), f"load_or_train did not save to {path}"
        assert path.resolve().is_relative_to(REPO / "runs")
        assert not (REPO / "checkpoints" / f"{name}.pt").exists()
        assert git("status", "--porcelain") == status, "a tracked file changed"
        git("check-ignore", "--quiet", str(path.relative_to(REPO)))
        # Loaded the second time, not trained again.
        checkpoints.load_or_train(name, lambda: pytest.fail("trained twice"))
    finally:
        path.unlink(missing_ok=True)


def test_runs_folder_can_move(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_COURSE_SMOKE", "0")
    monkeypatch.setenv("VAE_COURSE_RUNS", str(tmp_path))
    assert checkpoints.trained_checkpoint("m") == tmp_path / "m.pt"
    monkeypatch.setenv("VAE_COURSE_SMOKE", "1")
    assert checkpoints.trained_checkpoint("m") == tmp_path / "smoke" / "m.pt"


def test_outside_the_checkout_nothing_is_read_or_written_in_the_package(
        full_budget, monkeypatch, tmp_path):
    lesson = tmp_path / "course" / "notebooks"
    lesson.mkdir(parents=True)
    monkeypatch.chdir(lesson)
    name = COMMITTED[0].stem if COMMITTED else "mnist_default"
    assert not checkpoints.course_checkpoint(name).exists()  # not the package's
    assert checkpoints.trained_checkpoint(name) == lesson / "runs" / f"{name}.pt"
    model, _ = checkpoints.load_or_train(name, tiny_model)
    assert (lesson / "runs" / f"{name}.pt").is_file()
    # A course's own committed model is found from a folder below it.
    committed = tmp_path / "course" / "checkpoints" / "other.pt"
    committed.parent.mkdir()
    vc.checkpoints.save_checkpoint(committed, model)
    assert checkpoints.course_checkpoint("other") == committed
    checkpoints.load_or_train("other", lambda: pytest.fail("trained"))
    assert not (lesson / "runs" / "other.pt").exists()


def test_smoke_models_never_stand_in_for_the_committed_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_COURSE_SMOKE", "1")
    monkeypatch.setenv("VAE_COURSE_RUNS", str(tmp_path))
    monkeypatch.chdir(REPO / "notebooks")
    for name in ("mnist_default", "mnist_latent2"):
        path = checkpoints.course_checkpoint(name)
        assert path == tmp_path / "smoke" / f"{name}.pt"


def make_dry_run(target: str, pattern: str = "nbconvert") -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make")
    result = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed-stamp", "-B", target], cwd=REPO,
        capture_output=True, text=True, check=True)
    commands = result.stdout.replace("\\\n", " ").splitlines()
    return [command for command in commands if re.search(pattern, command)]


@pytest.mark.parametrize("target", ["lab", "test", "test-portable", "checkpoints"])
def test_make_points_the_lessons_at_the_repositorys_runs_and_data(target):
    commands = make_dry_run(target, r"jupyter (lab|nbconvert)|pytest")
    assert commands, f"make {target} starts no lessons"
    for command in commands:
        assert f"VAE_COURSE_RUNS={REPO}/runs " in command, command
        assert f"VAE_COURSE_DATA=${{VAE_COURSE_DATA:-{REPO}/data}}" in command, command


def test_make_course_writes_only_into_build():
    commands = make_dry_run("course")
    assert commands, "make course runs no nbconvert"
    for command in commands:
        assert "--inplace" not in command, command
        outputs = re.findall(r"--output-dir\s+(\S+)", command)
        assert outputs and all(out.startswith("build/") for out in outputs), command
        if "--execute" in command:
            assert re.search(r"VAE_COURSE_RUNS=\S*build/", command), (
                f"executed lessons would save their models outside build/: {command}")
