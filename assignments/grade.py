"""Grade a folder of submitted notebooks (make grade ASSIGNMENT=... SUBMISSIONS=...).

SUBMISSIONS holds one notebook per student, STUDENT.ipynb, for the assignment
ASSIGNMENT (a name from assignments/*.toml, built by make assignments). Each one is
graded by nbgrader's autograde in a working copy of its own, in a kernel of its own:
the check cells are restored from the source notebook, so an edited check counts
for nothing, and every cell may run --cell-timeout seconds before it is interrupted
(the cells after it still run). The whole grading of one student may take --timeout
seconds; past that its kernel is stopped and it scores 0. Files a submission changes
outside its own folder (in its working copy, the submissions folder or the course
folder) are listed in its notes. Into OUT (build/grades/ASSIGNMENT/):

    scores.csv           one row per student: the marks of each question, the total
                         and notes; the first row, "max", holds the points of each
    feedback/STUDENT.html   the graded notebook with every check's report and marks

    python assignments/grade.py ASSIGNMENT SUBMISSIONS [--out DIR] [--course DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
from build_assignments import REPO, nbgrader_environment

STUDENT = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]*")
AUTOGRADE_ONE = Path(__file__).resolve().parent / "autograde_one.py"
MARKER = "VAE_COURSE_GRADING_RUN"  # set in the environment of every process we start


@dataclass
class Result:
    student: str
    marks: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return round(sum(self.marks.values()), 2)


def questions(course: Path, assignment: str) -> dict[str, float]:
    """The graded questions of an assignment, in the notebook's order: id -> points."""
    source = course / "source" / assignment / f"{assignment}.ipynb"
    cells = [cell.metadata.get("nbgrader", {})
             for cell in nbformat.read(source, as_version=4).cells]
    return {cell["grade_id"]: float(cell["points"]) for cell in cells
            if cell.get("grade")}


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every file under ``root`` but those under ``skip``: path -> content digest."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(part) for part in skip):
            files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(path for path in before.keys() | after.keys()
                  if before.get(path) != after.get(path))


def stop_processes(run_id: str) -> int:
    """Kill what a student's grading left running (its kernel): the processes whose
    environment carries this run's marker. Returns how many."""
    stopped = 0
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == run_id:
                process.kill()
                stopped += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return stopped


def grade_one(submission: Path, assignment: str, course: Path, out: Path,
              points: dict[str, float], watched: tuple[Path, ...], cell_timeout: int,
              timeout: float) -> Result:
    """Autograde one submission in a working copy of the course of its own."""
    from nbgrader.api import Gradebook

    student = submission.stem
    result = Result(student)
    with tempfile.TemporaryDirectory(prefix=f"grade-{student}-") as folder:
        work = Path(folder)
        shutil.copy(course / "nbgrader_config.py", work)
        shutil.copy(course / "gradebook.db", work)
        shutil.copytree(course / "source" / assignment, work / "source" / assignment)
        own = work / "submitted" / student / assignment
        own.mkdir(parents=True)
        shutil.copy(submission, own / f"{assignment}.ipynb")
        scratch = work / "scratch"  # the kernel's home and temporary folder
        scratch.mkdir()
        run_id = uuid.uuid4().hex
        env = nbgrader_environment(**{
            MARKER: run_id, "HOME": str(scratch), "TMPDIR": str(scratch),
            "MPLCONFIGDIR": str(scratch / "matplotlib"),
            "JUPYTER_RUNTIME_DIR": str(scratch / "jupyter")})
        allowed = (work / "autograded" / student, work / "feedback", scratch,
                   work / "gradebook.db", work / "gradebook.db-journal")
        before = [snapshot(work, allowed), *(snapshot(path) for path in watched)]
        try:
            run = subprocess.run([sys.executable, str(AUTOGRADE_ONE), assignment,
                                  student, str(cell_timeout)], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=timeout,
                                 start_new_session=True)
            if run.returncode != 0:
                result.notes.append("nbgrader could not grade it: "
                                    + _last_error(run.stderr))
        except subprocess.TimeoutExpired:
            result.notes.append(f"stopped after {timeout:g} s: it did not finish")
        finally:
            stop_processes(run_id)
        after = [snapshot(work, allowed), *(snapshot(path) for path in watched)]
        outside = [path for old, new in zip(before, after, strict=True)
                   for path in changed(old, new)]
        if outside:
            shown = ", ".join(str(Path(path).relative_to(work)) if
                              Path(path).is_relative_to(work) else path
                              for path in outside[:5])
            result.notes.append(f"wrote outside its folder: {shown}"
                                + (" ..." if len(outside) > 5 else ""))
        graded = work / "autograded" / student / assignment / f"{assignment}.ipynb"
        if not graded.is_file():
            return result
        with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as gradebook:
            submitted = gradebook.find_submission_notebook(assignment, assignment,
                                                           student)
            for grade in submitted.grades:
                if grade.cell.name in points:
                    result.marks[grade.cell.name] = float(grade.score)
        page = work / "feedback" / student / assignment / f"{assignment}.html"
        if page.is_file():
            shutil.copy(page, out / "feedback" / f"{student}.html")
        else:
            result.notes.append("no feedback page")
    return result


def _last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "ERROR" in line]
    return (errors or lines or ["(no message)"])[-1].strip()[:200]


def write_table(path: Path, points: dict[str, float], results: list[Result]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["student", *points, "total", "notes"])
        writer.writerow(["max", *(f"{value:g}" for value in points.values()),
                         f"{sum(points.values()):g}", ""])
        for result in results:
            writer.writerow([result.student,
                             *(f"{result.marks.get(qid, 0.0):g}" for qid in points),
                             f"{result.total:g}", "; ".join(result.notes)])


def grade(assignment: str, submissions: Path, out: Path, course: Path,
          cell_timeout: int = 60, timeout: float = 600) -> list[Result]:
    """Grade every STUDENT.ipynb in ``submissions``; write scores.csv and feedback."""
    if not (course / "source" / assignment / f"{assignment}.ipynb").is_file():
        raise FileNotFoundError(f"no assignment {assignment!r} in {course}: run make "
                                "assignments first, and name one of assignments/*.toml")
    if not submissions.is_dir():
        raise FileNotFoundError(f"no such folder of submissions: {submissions}")
    notebooks = sorted(submissions.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (STUDENT.ipynb) in {submissions}")
    bad = [path.name for path in notebooks if not STUDENT.fullmatch(path.stem)]
    if bad:
        raise ValueError(f"name each submission STUDENT.ipynb, with letters, digits, "
                         f"'_', '.' or '-' only; these are not: {bad}")
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    points = questions(course, assignment)
    watched = (submissions.resolve(), course.resolve())
    results = []
    for notebook in notebooks:
        result = grade_one(notebook, assignment, course, out, points, watched,
                           cell_timeout, timeout)
        print(f"{result.student}: {result.total:g} of {sum(points.values()):g}"
              + (f"  ({'; '.join(result.notes)})" if result.notes else ""))
        results.append(result)
    write_table(out / "scores.csv", points, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignment", help="e.g. 03_elbo (see assignments/*.toml)")
    parser.add_argument("submissions", type=Path, help="folder of STUDENT.ipynb")
    parser.add_argument("--course", type=Path,
                        default=REPO / "build" / "assignments" / "course",
                        help="nbgrader's course folder, built by make assignments")
    parser.add_argument("--out", type=Path, help="default: build/grades/ASSIGNMENT")
    parser.add_argument("--cell-timeout", type=int, default=60,
                        help="seconds one cell may run (default 60)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds the grading of one student may take (600)")
    args = parser.parse_args(argv)
    if args.cell_timeout <= 0 or args.timeout <= 0:
        parser.error("--cell-timeout and --timeout must be positive")
    out = args.out or REPO / "build" / "grades" / args.assignment
    try:
        grade(args.assignment, args.submissions.resolve(), out.resolve(),
              args.course.resolve(), args.cell_timeout, args.timeout)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"Scores in {out / 'scores.csv'}, feedback in {out / 'feedback'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
