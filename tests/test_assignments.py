"""The graded assignments: built from assignments/*.toml, graded by nbgrader.

Every lesson's assignment is built once, and every question's worked answer and stub
are scored in this process (fast); then a few students' notebooks of two lessons are
graded through grade.py as a teacher would: the worked solutions, the untouched
notebook, the typical slips, and a submission that raises, hangs and writes outside
its folder.
"""

from __future__ import annotations

import csv
import functools
import html
import importlib
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch

import vae_course as vc
from vae_course import check

REPO = Path(__file__).resolve().parents[1]
# The teacher's scripts, assignments/build_assignments.py and grade.py, as modules.
sys.path.insert(0, str(REPO / "assignments"))
build = importlib.import_module("build_assignments")
grade = importlib.import_module("grade")

SPECS = sorted((REPO / "assignments").glob("*.toml"))
CELL_TIMEOUT = 10  # seconds: 20 times what a right answer's checks take
# The questions of every spec, as (spec, question id).
QUESTIONS = [pytest.param(path, question["id"], id=f"{path.stem}-{question['id']}")
             for path in SPECS for question in build.load_spec(path)["question"]]


def answers_of(spec: dict) -> dict[str, str]:
    """Each question's worked solution, as the whole function."""
    functions = build.solution_functions(build.NOTEBOOKS / spec["solutions"])
    return {question["answer"]: "\n".join(functions[question["answer"]])
            for question in spec["question"]}


def submission(student: nbformat.NotebookNode, answers: dict[str, str]):
    """The student notebook with the given answer cells (by function) replaced."""
    notebook = nbformat.from_dict(student)
    for cell in notebook.cells:
        if not cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        name = cell.source.split("def ", 1)[1].split("(", 1)[0]
        if name in answers:
            cell.source = answers[name]
    return notebook


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignments")
    assert build.main(["--out", str(out), *map(str, SPECS)]) == 0
    return out


def student_notebook(built, name):
    return nbformat.read(built / f"{name}.ipynb", as_version=4)


def grade_folder(built, tmp_path_factory, name, notebooks: dict):
    submissions = tmp_path_factory.mktemp(f"submitted-{name}")
    for student, notebook in notebooks.items():
        nbformat.write(notebook, submissions / f"{student}.ipynb")
    out = tmp_path_factory.mktemp(f"grades-{name}")
    grade.grade(name, submissions, out, built / "course", cell_timeout=CELL_TIMEOUT,
                timeout=300)
    with (out / "scores.csv").open(newline="") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    return rows, out


def feedback(out, student) -> str:
    return html.unescape((out / "feedback" / f"{student}.html").read_text())


def marks(row, *ids):
    return [float(row[qid]) for qid in ids]


# ------------------------------------------------------------- the built notebooks


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda path: path.stem)
def test_student_notebooks_hold_stubs_and_no_solution(built, spec_path):
    spec = build.load_spec(spec_path)
    notebook = student_notebook(built, spec_path.stem)
    sources = "\n".join(cell.source for cell in notebook.cells)
    answer_cells = [cell for cell in notebook.cells
                    if cell.metadata.get("nbgrader", {}).get("solution")]
    assert len(answer_cells) == len(spec["question"])
    assert all("raise NotImplementedError()" in cell.source for cell in answer_cells)
    assert "HIDDEN TESTS" not in sources and "BEGIN SOLUTION" not in sources
    # Not one line of any worked solution of the course is in the notebook, but for
    # the lines that the lessons show too: those of the code an exercise hands out
    # to debug, which a prompt shows as well.
    shown = lessons_markdown()
    for solutions in sorted((REPO / "notebooks" / "solutions").glob("*.ipynb")):
        for name, (_, body) in build.solution_functions(solutions).items():
            for line in body.splitlines():
                code = line.split("#")[0].strip()
                if len(code) > 12 and code not in shown:
                    assert code not in sources, (name, code)


@functools.cache
def lessons_markdown() -> str:
    """The Markdown of every lesson, where the exercises are."""
    return "\n".join(cell.source for lesson in (REPO / "notebooks").glob("*.ipynb")
                     for cell in nbformat.read(lesson, as_version=4).cells
                     if cell.cell_type == "markdown")


def test_hidden_checks_stay_in_the_source(built):
    source = nbformat.read(built / "course" / "source" / "03_elbo" / "03_elbo.ipynb",
                           as_version=4)
    assert any("### BEGIN HIDDEN TESTS" in cell.source for cell in source.cells)


def test_a_bad_spec_is_refused_with_what_to_fix(tmp_path):
    spec = tmp_path / "99_bad.toml"
    good = (REPO / "assignments" / "03_elbo.toml").read_text()
    spec.write_text(good.replace('answer = "kl_of"', 'answer = "kl_off"'))
    with pytest.raises(build.SpecError, match="defines no function 'kl_off'"):
        build.build(spec, tmp_path)
    spec.write_text(good.replace("points = 2", "points = 0", 1))
    with pytest.raises(build.SpecError, match="points must be a positive"):
        build.load_spec(spec)
    spec.write_text(good + '\n[[question]]\nid = "x"\nanswr = "y"\n')
    with pytest.raises(build.SpecError, match="unknown keys"):
        build.load_spec(spec)


# ----------------------------------------- each question's worked answer and stub


@pytest.fixture
def torch_settings(monkeypatch):
    """A spec's vc.setup keeps the threads as they are, without measuring the
    machine's load for a quarter of a second; its determinism is undone after."""
    threads = torch.get_num_threads()
    monkeypatch.setenv(vc.runtime.THREADS_ENV_VAR, str(threads))
    monkeypatch.setattr(vc.runtime, "machine_load", lambda: 0.0)
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def cells_of(spec_path: Path) -> dict[str, str]:
    """The source notebook's code cells of a spec, by nbgrader grade id."""
    notebook = build.source_notebook(build.load_spec(spec_path))
    return {cell.metadata["nbgrader"]["grade_id"]: cell.source
            for cell in notebook.cells if cell.cell_type == "code"}


def marks_of(cells: dict[str, str], qid: str, answer: str) -> float:
    """The marks that the question's check cell gives ``answer``, after the setup."""
    namespace = {}
    exec(cells["setup"], namespace)
    exec(answer, namespace)
    exec(cells[qid], namespace)
    return namespace["marks"]


@pytest.mark.parametrize(("spec_path", "qid"), QUESTIONS)
def test_worked_answer_scores_full_marks_and_a_stub_none(spec_path, qid, capsys,
                                                          torch_settings):
    spec = build.load_spec(spec_path)
    question = next(question for question in spec["question"] if question["id"] == qid)
    cells = cells_of(spec_path)
    worked = cells[f"{qid}_answer"]
    assert f"def {question['answer']}(" in worked and "### BEGIN SOLUTION" in worked
    points = question["points"]
    assert marks_of(cells, qid, worked) == points
    assert f"Marks: {points} of {points}" in capsys.readouterr().out
    # The stub as nbgrader writes it into the student notebook.
    stub = re.sub(r"### BEGIN SOLUTION.*### END SOLUTION", "raise NotImplementedError()",
                  worked, flags=re.DOTALL)
    assert marks_of(cells, qid, stub) == 0
    assert "NotImplementedError" in capsys.readouterr().out


def test_a_worked_answer_brings_the_helpers_it_calls():
    helpers = build.solution_helpers(
        build.NOTEBOOKS / "solutions" / "12_iwae_solutions.ipynb", "bound_fixed")
    assert [helper.splitlines()[0] for helper in helpers] == [
        "def bound_with_rsample(model, x, k):"]
    worked = cells_of(REPO / "assignments" / "12_iwae.toml")["iwae_bound_answer"]
    assert "    def bound_with_rsample(model, x, k):" in worked


# ------------------------------------------------------------------ vc.check.score


def test_score_counts_the_checks_that_pass(capsys):
    def kl_mean(mu, log_var):
        return 0.5 * (mu**2 + log_var.exp() - 1 - log_var).mean(-1)

    partial = check.score(check.kl_standard_normal, kl_mean, points=2)
    out = capsys.readouterr().out
    assert 0 < partial < 2 and "average over the latent units" in out
    assert f"Marks: {partial:g} of 2" in out
    assert check.score(check.kl_standard_normal, vc.elbo.kl_standard_normal,
                       takes="posterior", points=2) == 2


def test_score_gives_nothing_for_no_function_and_refuses_misuse(capsys):
    assert check.score(check.negative_elbo, None, points=3) == 0
    assert "define it in the answer cell" in capsys.readouterr().out
    with pytest.raises(ValueError, match="points must be a positive"):
        check.score(check.negative_elbo, lambda model, x: 0, points=0)
    with pytest.raises(TypeError, match="one of vc.check's checkers"):
        check.score(print, lambda model, x: 0)


# ------------------------------------------------------------------------ grading


SLIPS_03 = {
    "kl_of": """
def kl_of(mu, log_var):
    return 0.5 * (mu**2 + log_var.exp() - 1 - log_var).mean(-1)
""",
    "my_negative_elbo": """
def my_negative_elbo(model, x):
    q = model.encode(x)
    log_var = q.stddev  # sigma where log sigma^2 belongs
    kl = 0.5 * (q.mean**2 + log_var.exp() - 1 - log_var).sum(-1)
    return -(model.decode(q.rsample()).log_prob(x) - kl).mean()
""",
    "mc_kl": """
def mc_kl(posterior, prior):
    z = posterior.sample()
    return posterior.log_prob(z) - prior.log_prob(z)
""",
}
UNRULY_03 = {
    "kl_of": """
with open("../../../escaped.txt", "w") as file:
    file.write("written outside the submission's folder")
""",
    "my_negative_elbo": """
def my_negative_elbo(model, x):
    q = model.encode(x)
    kl = 0.5 * (q.mean**2 + q.variance - 1 - q.variance.log()).sum(-1)
    return -(model.decode(q.rsample()).log_prob(x) + kl).mean()
""",
    "mixture_log_prob": 'raise RuntimeError("this cell breaks")',
    "mc_kl": """
def mc_kl(posterior, prior):
    while True:
        pass
""",
}


@pytest.fixture(scope="module")
def graded_03(built, tmp_path_factory):
    spec = build.load_spec(REPO / "assignments" / "03_elbo.toml")
    student, right = student_notebook(built, "03_elbo"), answers_of(spec)
    unruly = {**right, **UNRULY_03}
    unruly["kl_of"] += "\n\n" + right["kl_of"]
    return grade_folder(built, tmp_path_factory, "03_elbo", {
        "solved": submission(student, right),
        "untouched": student,
        "slips": submission(student, {**right, **SLIPS_03}),
        "unruly": submission(student, unruly),
    })


@pytest.fixture(scope="module")
def graded_01(built, tmp_path_factory):
    spec = build.load_spec(REPO / "assignments" / "01_distributions.toml")
    student = student_notebook(built, "01_distributions")
    return grade_folder(built, tmp_path_factory, "01_distributions", {
        "solved": submission(student, answers_of(spec)),
        "untouched": student,
    })


@pytest.mark.slow
@pytest.mark.parametrize("lesson", ["01", "03"])
def test_solutions_score_full_marks_and_stubs_none(request, lesson):
    rows, _ = request.getfixturevalue(f"graded_{lesson}")
    ids = [key for key in rows["max"] if key not in ("student", "total", "notes")]
    assert marks(rows["solved"], *ids) == marks(rows["max"], *ids)
    assert rows["solved"]["total"] == rows["max"]["total"] and not rows["solved"][
        "notes"]
    assert marks(rows["untouched"], *ids) == [0.0] * len(ids)


@pytest.mark.slow
def test_slips_get_partial_marks_and_their_diagnostic(graded_03):
    rows, out = graded_03
    slips, full = rows["slips"], rows["max"]
    for qid in ("kl_standard_normal", "negative_elbo", "monte_carlo_kl"):
        assert 0 < float(slips[qid]) < float(full[qid]), qid
    assert slips["mixture_log_prob"] == full["mixture_log_prob"]
    page = feedback(out, "slips")
    for hint in ("average over the latent units", "log sigma^2", "use rsample"):
        assert hint in page, hint


@pytest.mark.slow
def test_a_submission_that_raises_hangs_or_writes_elsewhere_is_contained(graded_03):
    rows, out = graded_03
    unruly, full = rows["unruly"], rows["max"]
    assert unruly["kl_standard_normal"] == full["kl_standard_normal"]  # earned
    assert 0 < float(unruly["negative_elbo"]) < float(full["negative_elbo"])
    assert marks(unruly, "mixture_log_prob", "monte_carlo_kl") == [0, 0]  # broke, hung
    assert "wrote outside its folder: escaped.txt" in unruly["notes"]
    page = feedback(out, "unruly")
    for shown in ("Flipped KL sign", "this cell breaks", "CellTimeoutError"):
        assert shown in page, shown
    # The student graded after it is untouched by it.
    assert rows["untouched"]["notes"] == "" and rows["solved"]["notes"] == ""


def test_grading_refuses_what_it_cannot_grade(built, tmp_path):
    with pytest.raises(FileNotFoundError, match="no assignment 'nope'"):
        grade.grade("nope", tmp_path, tmp_path / "out", built / "course")
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        grade.grade("03_elbo", tmp_path, tmp_path / "out", built / "course")
    (tmp_path / "two words.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="name each submission"):
        grade.grade("03_elbo", tmp_path, tmp_path / "out", built / "course")
