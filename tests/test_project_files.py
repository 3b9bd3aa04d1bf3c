"""The project's own files agree with each other and keep machine details out."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A requirement: a name, then an optional specifier such as ==2.15.0 or >=1.0.
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")
# Absolute paths of the machines the course is built on. The pattern is assembled
# from pieces so that this file does not trip it; a path must start a word, so
# "notebooks/tmp/" or a URL does not count.
MACHINE_ROOTS = ("work", "tmp", "root")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:" + "|".join(MACHINE_ROOTS) + r")/")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> tuple[str, str]:
    match = REQUIREMENT.match(text)
    assert match, f"cannot read requirement {text!r}"
    return canonical(match.group(1)), match.group(3).replace(" ", "")


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def pyproject_requirements() -> dict[str, str]:
    project = pyproject()["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["test"]
    return dict(parse_requirement(item) for item in listed)


def environment_lines() -> list[tuple[int, str, str, str]]:
    """(indent, section, item, comment) for each "- item  # comment" line.

    Read line by line, without a YAML library: the file is a flat conda list whose
    ``pip:`` entry holds an indented list of its own.
    """
    rows = []
    section = ""
    for line in (REPO / "environment.yml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        body, _, comment = line.partition(" #")
        indent = len(line) - len(line.lstrip())
        stripped = body.strip()
        if not stripped.startswith("- "):
            section = stripped.rstrip(":")
            continue
        item = stripped[2:].strip()
        if item == "pip:":
            section = "pip"
            continue
        if section == "pip" and indent <= 2:
            section = "dependencies"
        rows.append((indent, section, item, comment.strip()))
    return rows


def environment_pip_requirements() -> dict[str, str]:
    return dict(parse_requirement(item) for _, section, item, _ in environment_lines()
                if section == "pip" and not item.startswith("-"))


def test_environment_pip_list_matches_pyproject():
    from_pyproject = pyproject_requirements()
    from_environment = environment_pip_requirements()
    assert sorted(from_environment) == sorted(from_pyproject), (
        "environment.yml's pip list and pyproject.toml (dependencies + test extra) "
        "name different packages")
    for name, specifier in from_pyproject.items():
        assert from_environment[name] == specifier, (
            f"{name}: pyproject.toml says {specifier!r}, "
            f"environment.yml says {from_environment[name]!r}")


def test_torch_and_torchvision_are_pinned_exactly():
    requirements = pyproject_requirements()
    assert requirements["torch"].startswith("==")
    assert requirements["torchvision"].startswith("==")


def test_every_environment_dependency_is_explained():
    rows = environment_lines()
    assert any(section == "pip" for _, section, _, _ in rows), "no pip: section"
    for _, section, item, comment in rows:
        if section not in ("dependencies", "pip"):
            continue  # channels
        assert comment, f"environment.yml: say what uses {item!r} in a comment"


def test_environment_python_matches_requires_python():
    minimum = pyproject()["project"]["requires-python"].removeprefix(">=")
    pythons = [item for _, section, item, _ in environment_lines()
               if section == "dependencies" and item.startswith("python")]
    assert pythons == [f"python={minimum}"]


def test_dev_extra_equals_test_extra():
    extras = pyproject()["project"]["optional-dependencies"]
    assert sorted(extras["dev"]) == sorted(extras["test"])


def in_git_repository() -> bool:
    if shutil.which("git") is None:
        return False
    result = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=REPO,
                            capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() == "true"


@pytest.mark.parametrize("path", [
    "data/MNIST/raw/train-images-idx3-ubyte",
    ".venv/bin/python",
    "build/html/01_distributions.html",
])
def test_gitignore_ignores_generated_folders(path):
    if in_git_repository():
        result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path],
                                cwd=REPO)
        assert result.returncode == 0, f".gitignore does not ignore {path}"
    else:
        patterns = {line.strip().strip("/")
                    for line in (REPO / ".gitignore").read_text().splitlines()}
        assert path.split("/")[0] in patterns


def project_files() -> list[Path]:
    """Files git tracks or would add: tracked plus untracked-but-not-ignored."""
    if not in_git_repository():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


def test_no_file_mentions_machine_paths():
    offenders = []
    for path in project_files():
        if not path.is_file():
            continue  # deleted in the work tree, or a submodule
        raw = path.read_bytes()
        if b"\0" in raw[:8192]:
            continue  # binary
        text = raw.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if MACHINE_PATH.search(line):
                where = f"{path.relative_to(REPO)}:{number}"
                offenders.append(f"{where}: {line.strip()[:80]}")
    assert not offenders, (
        "absolute paths of this machine in files to be committed (use paths "
        "relative to the repository):\n" + "\n".join(offenders[:30]))


def test_ci_script_is_executable_bash():
    script = REPO / ".ci" / "run"
    assert script.is_file()
    assert script.stat().st_mode & 0o111, ".ci/run must be executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    assert "make test" in text


def test_readme_quick_start_commands_exist_in_makefile():
    makefile = (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    for target in ("lab", "test", "course", "notebook", "install", "clean"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no make {target}"
    for command in ("make lab", "make test"):
        assert command in readme
