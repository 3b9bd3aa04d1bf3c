"""The committed notebooks are executed, error-free and shaped like a lesson.

These tests read the ``.ipynb`` files as they are in the repository, without running
them (the nbval run in ``make test`` does that). They keep the promises of
CONTRIBUTING.md: notebooks are committed executed, carry no error output, open with
learning goals, close with a Summary and Exercises, come with a solutions notebook,
and check enough outputs under nbval. A folder with no notebooks yet yields no tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
LESSON_NAME = re.compile(r"^(\d\d)_(\w+)\.ipynb$")
CHECK_TAG = "nbval-check-output"
SKIP_TAG = "nbval-skip"
# A skipped cell says why in its metadata, where learners and slides never see it.
SKIP_REASON_KEY = "nbval-skip-reason"
MARKER_COMMENT = re.compile(r"^\s*#\s*NBVAL_", re.IGNORECASE)
MIN_CHECKED_CELLS = 5


def all_notebooks() -> list[Path]:
    return sorted(path for path in NOTEBOOKS.rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in path.parts)


def lessons() -> list[Path]:
    return sorted(path for path in NOTEBOOKS.glob("*.ipynb")
                  if LESSON_NAME.match(path.name))


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


ALL = all_notebooks()
LESSONS = lessons()


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def markdown_headings(notebook: nbformat.NotebookNode) -> list[str]:
    return [line.strip() for cell in notebook.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if line.lstrip().startswith("#")]


def code_cells(notebook: nbformat.NotebookNode):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def tagged(cell, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_notebook_is_valid(path):
    notebook = read(path)
    nbformat.validate(notebook)


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_every_code_cell_was_executed(path):
    missing = [index for index, cell in enumerate(read(path).cells)
               if cell.cell_type == "code" and cell.source.strip()
               and cell.get("execution_count") is None]
    assert not missing, (
        f"{relative(path)}: cells {missing} have no execution count; commit the "
        f"notebook executed (make notebook NB={relative(path)})")


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_no_error_outputs(path):
    errors = [(index, output.get("ename", "?"))
              for index, cell in enumerate(read(path).cells) if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors, (
        f"{relative(path)}: error outputs in cells {errors}; a cell that shows an "
        f"error catches it and prints the message")


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_no_test_marker_in_sight(path):
    marked = [index for index, cell in enumerate(code_cells(read(path)))
              if any(MARKER_COMMENT.match(line) for line in cell.source.splitlines())]
    assert not marked, (
        f"{relative(path)}: code cells {marked} carry an nbval comment a learner "
        f"would read; use the cell tags {CHECK_TAG!r} or {SKIP_TAG!r} instead")


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_skipped_cells_give_a_reason(path):
    bare = [index for index, cell in enumerate(code_cells(read(path)))
            if tagged(cell, SKIP_TAG)
            and not str(cell.metadata.get(SKIP_REASON_KEY, "")).strip()]
    assert not bare, (
        f"{relative(path)}: code cells {bare} are tagged {SKIP_TAG!r} without a "
        f"reason; give the cell metadata a {SKIP_REASON_KEY!r} string")


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_opens_with_title_and_learning_goals(path):
    cells = read(path).cells
    assert cells, f"{relative(path)} is empty"
    first = cells[0]
    assert first.cell_type == "markdown", "the first cell is the Markdown title"
    assert first.source.lstrip().startswith("# "), "the first cell opens with '# Title'"
    assert "Learning goals" in first.source


def test_lessons_are_numbered_in_order():
    """00, 01, 02, ... with no gap or repeat, each title carrying its file's number,
    and each solutions notebook titled like its lesson."""
    numbers = [LESSON_NAME.match(path.name).group(1) for path in LESSONS]
    assert numbers == [f"{n:02d}" for n in range(len(numbers))], numbers
    for path in LESSONS:
        number, name = LESSON_NAME.match(path.name).groups()
        title = read(path).cells[0].source.lstrip().splitlines()[0]
        assert title.startswith(f"# {number} · "), f"{relative(path)}: {title!r}"
        solutions = SOLUTIONS / f"{number}_{name}_solutions.ipynb"
        if solutions.is_file():
            heading = read(solutions).cells[0].source.lstrip().splitlines()[0]
            assert heading.startswith(f"# {number} · "), \
                f"{relative(solutions)}: {heading!r}"


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_has_summary_and_exercises(path):
    headings = markdown_headings(read(path))
    for wanted in ("## Summary", "## Exercises"):
        assert any(heading.startswith(wanted) for heading in headings), (
            f"{relative(path)} has no '{wanted}' section")


@pytest.mark.parametrize("path", LESSONS, ids=relative)
def test_lesson_has_a_solutions_notebook(path):
    number, name = LESSON_NAME.match(path.name).groups()
    solutions = SOLUTIONS / f"{number}_{name}_solutions.ipynb"
    assert solutions.is_file(), f"{relative(path)} has no {relative(solutions)}"


@pytest.mark.parametrize("path", LESSONS, ids=relative)
def test_lesson_checks_enough_outputs(path):
    checked = [cell for cell in code_cells(read(path)) if tagged(cell, CHECK_TAG)]
    assert len(checked) >= MIN_CHECKED_CELLS, (
        f"{relative(path)}: {len(checked)} cells tagged {CHECK_TAG!r}, "
        f"at least {MIN_CHECKED_CELLS} wanted")
    silent = [cell.source.splitlines()[:1] for cell in checked if not cell.outputs]
    assert not silent, f"{relative(path)}: checked cells with no output: {silent}"


MAX_CODE_LINES = 20  # CONTRIBUTING.md asks for about 15; this is the hard limit


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_code_cells_stay_short(path):
    long_cells = [(index, len(cell.source.splitlines()))
                  for index, cell in enumerate(read(path).cells)
                  if cell.cell_type == "code"
                  and len(cell.source.splitlines()) > MAX_CODE_LINES]
    assert not long_cells, (
        f"{relative(path)}: code cells (index, lines) {long_cells} are longer than "
        f"{MAX_CODE_LINES} lines; split them where a reader would pause")


# A static look at the code of figure cells, not at the pictures: a cell that draws
# with matplotlib itself must say what its axes are. Cells that only call a
# vc.plots helper never match (the helpers are tested in test_plots.py).
DRAWS_DATA = re.compile(r"\.(plot|bar|barh|scatter|contourf?|hist|loglog|semilogx|"
                        r"semilogy|pcolormesh|errorbar|fill_between)\(")
DRAWS_IMAGE = re.compile(r"\.imshow\(")
COLOUR_CARRIES_A_VALUE = re.compile(r"\.(contourf|pcolormesh)\(|\.scatter\([^)]*\bc=",
                                    re.DOTALL)
NAMES_AN_IMAGE = re.compile(r"title|set_axis_off\(|axis\(\s*[\"']off")


def figure_problems(source: str) -> list[str]:
    """What a figure-drawing cell leaves unlabelled (empty when all is named)."""
    code = "\n".join(line for line in source.splitlines()
                     if not line.lstrip().startswith("#"))
    problems = []
    if DRAWS_DATA.search(code):
        problems += [f"no {axis}" for axis in ("xlabel", "ylabel") if axis not in code]
    if DRAWS_IMAGE.search(code) and not NAMES_AN_IMAGE.search(code):
        problems.append("an image with neither a title nor its axes turned off")
    if COLOUR_CARRIES_A_VALUE.search(code) and "colorbar(" not in code:
        problems.append("colour carries a value but there is no colour bar")
    return problems


@pytest.mark.parametrize(("source", "expected"), [
    ("fig, ax = plt.subplots()\nax.plot(x, y)", ["no xlabel", "no ylabel"]),
    ("ax.plot(x, y)\nax.set_xlabel('epoch')\n# ax.set_ylabel('nats')", ["no ylabel"]),
    ("ax.plot(x, y)\nax.set(xlabel='epoch', ylabel='nats')", []),
    ("ax.imshow(grid)", ["an image with neither a title nor its axes turned off"]),
    ("ax.imshow(grid)\nax.axis('off')", []),
    ("ax.contourf(a, b, c)\nax.set_xlabel('mu')\nax.set_ylabel('logvar')",
     ["colour carries a value but there is no colour bar"]),
    ("ax.scatter(x, y,\n           c=labels)\nfig.colorbar(s)\nax.set_xlabel('z1')\n"
     "ax.set_ylabel('z2')", []),
    ("vc.plots.plot_latent_scatter(model, images, labels);", []),
])
def test_figure_check_sees_what_is_missing(source, expected):
    assert figure_problems(source) == expected


@pytest.mark.parametrize("path", ALL, ids=relative)
def test_figure_cells_label_what_they_draw(path):
    unlabelled = {index: problems for index, cell in enumerate(read(path).cells)
                  if cell.cell_type == "code"
                  and (problems := figure_problems(cell.source))}
    assert not unlabelled, (
        f"{relative(path)}: figure cells {unlabelled}; label both axes with their "
        f"units, give images a title, and add a colour bar where colour is a value")
