"""Build the student notebooks of the graded assignments (make assignments).

Each assignments/NN_name.toml names the exercises of one lesson that a vc.check
checker grades. For each, this writes an nbgrader source notebook whose answers are
the worked solutions, taken from the committed solutions notebook, then lets nbgrader
turn it into the student notebook: every answer a stub raising NotImplementedError,
every check cell's hidden part removed. Into OUT (build/assignments/):

    NN_name.ipynb     the student notebook to hand out
    course/           nbgrader's course folder (source/, release/, gradebook.db),
                      which grade.py grades against

    python assignments/build_assignments.py [--out DIR] [SPEC.toml ...]

(all the specs when none is named)
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOKS = REPO / "notebooks"
CONFIG = HERE / "nbgrader_config.py"
GENERATE = HERE / "generate_assignments.py"  # nbgrader, run in the course folder
NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_]*")
SPEC_KEYS = {"title", "lesson", "solutions", "setup", "question"}
QUESTION_KEYS = {"id", "points", "answer", "check", "options", "hidden", "prompt"}
HOW_TO = """\
Each question asks for one function. Write it in the answer cell in place of
`raise NotImplementedError()`, run the cell, then run the check cell below it: it
prints what passes and what to fix, and the marks those checks give. Grading runs
the same checks{hidden} in a fresh kernel from the top: make sure the notebook runs
from top to bottom (Kernel > Restart and run all)."""


def nbgrader_environment(**extra: str) -> dict[str, str]:
    """The environment for nbgrader: it runs its helpers (alembic) from PATH, so the
    folder of this Python's scripts comes first."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


class SpecError(ValueError):
    """An assignment spec that cannot be built, with what to fix."""


def load_spec(path: Path) -> dict:
    """The spec in ``path``, checked: every key known and every answer named."""
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path.name}: not valid TOML: {error}") from None
    where = path.name
    _known_keys(spec, SPEC_KEYS, where)
    for key in ("title", "lesson", "solutions", "setup"):
        _text(spec, key, where)
    for key in ("lesson", "solutions"):
        if not (NOTEBOOKS / spec[key]).is_file():
            raise SpecError(f"{where}: {key} {spec[key]!r} is not a notebook in "
                            "notebooks/")
    questions = spec.get("question")
    if not isinstance(questions, list) or not questions:
        raise SpecError(f"{where}: no [[question]]: name at least one")
    seen = set()
    for number, question in enumerate(questions, 1):
        at = f"{where}, question {number}"
        _known_keys(question, QUESTION_KEYS, at)
        for key in ("id", "answer", "check", "prompt"):
            _text(question, key, at)
        for key in ("id", "answer"):
            if not NAME.fullmatch(question[key]):
                raise SpecError(f"{at}: {key} {question[key]!r} must be a Python name")
        if question["id"] in seen:
            raise SpecError(f"{at}: id {question['id']!r} is used twice")
        seen.add(question["id"])
        points = question.get("points")
        if isinstance(points, bool) or not isinstance(points, int) or points <= 0:
            raise SpecError(f"{at}: points must be a positive whole number; "
                            f"got {points!r}")
        if not isinstance(question.get("options", {}), dict):
            raise SpecError(f"{at}: options must be a table of keyword arguments")
        if "hidden" in question:
            _text(question, "hidden", at)
    return spec


def _known_keys(table: dict, known: set, where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")


def _text(table: dict, key: str, where: str) -> None:
    if not isinstance(table.get(key), str) or not table[key].strip():
        raise SpecError(f"{where}: {key} must be a non-empty string")


def solution_functions(notebook: Path) -> dict[str, tuple[str, str]]:
    """Every function the notebook's code cells define: name -> (header, body)."""
    return {name: _split_function(lines, node)
            for name, (node, lines) in _definitions(notebook).items()}


def solution_helpers(notebook: Path, name: str) -> list[str]:
    """The other functions of the notebook that function ``name`` calls, directly or
    through each other, each as written, in the order the notebook defines them: a
    worked answer that calls them brings them along."""
    definitions = _definitions(notebook)
    needed, todo = set(), [name]
    while todo:
        node, _ = definitions[todo.pop()]
        for used in ast.walk(node):
            if (isinstance(used, ast.Name) and used.id in definitions
                    and used.id not in needed | {name}):
                needed.add(used.id)
                todo.append(used.id)
    return ["\n".join(lines[node.lineno - 1:node.end_lineno])
            for helper, (node, lines) in definitions.items() if helper in needed]


def _definitions(notebook: Path) -> dict[str, tuple[ast.FunctionDef, list[str]]]:
    """Every top-level function of the notebook's code cells: name -> (its node, the
    lines of its cell); a name defined twice is the later definition."""
    found = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef):
                found.pop(node.name, None)  # a redefinition takes the later place
                found[node.name] = node, lines
    return found


def _split_function(lines: list[str], node: ast.FunctionDef) -> tuple[str, str]:
    """The ``def ...:`` lines and the body lines of a function, as written."""
    source = lines[node.lineno - 1:node.end_lineno]
    header_end = node.body[0].lineno - node.lineno  # comments may follow the header
    for index, line in enumerate(source[:header_end]):
        if line.split("#")[0].rstrip().endswith(":"):
            header_end = index + 1
            break
    # The header's comments belong to the worked solution, not to the question.
    header = [line.split("#")[0].rstrip() for line in source[:header_end]]
    return "\n".join(header), "\n".join(source[header_end:])


def _cell(kind: str, source: str, grade_id: str | None = None, **nbgrader):
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source.strip("\n"))
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "schema_version": 3,
                                     "grade": False, "solution": False,
                                     "locked": True, **nbgrader}
    return cell


def check_call(question: dict) -> str:
    """The check cell's call of vc.check.score for this question."""
    options = "".join(f", {key}={value!r}"
                      for key, value in question.get("options", {}).items())
    return (f"vc.check.score(vc.check.{question['check']}, {question['answer']}"
            f"{options}, points={question['points']})")


def source_notebook(spec: dict) -> nbformat.NotebookNode:
    """The nbgrader source notebook: answers filled in, hidden checks marked."""
    solutions = solution_functions(NOTEBOOKS / spec["solutions"])
    count, total = len(spec["question"]), sum(q["points"] for q in spec["question"])
    any_hidden = any("hidden" in question for question in spec["question"])
    cells = [
        _cell("markdown", f"# {spec['title']}: assignment\n\n{count} question"
              f"{'s' if count > 1 else ''}, {total} points, on the lesson "
              f"`{spec['lesson']}`.\n\n"
              + HOW_TO.format(hidden=", and a few hidden ones," if any_hidden else ""),
              "title"),
        _cell("code", spec["setup"], "setup"),
    ]
    for number, question in enumerate(spec["question"], 1):
        name, qid = question["answer"], question["id"]
        if name not in solutions:
            raise SpecError(f"question {qid!r}: {spec['solutions']} defines no "
                            f"function {name!r}")
        header, body = solutions[name]
        # The solution's own helpers, nested in it: the stub keeps only the header.
        for helper in reversed(solution_helpers(NOTEBOOKS / spec["solutions"], name)):
            body = textwrap.indent(helper, "    ") + "\n\n" + body
        hidden = question.get("hidden", "").strip("\n")
        check = f"marks = {check_call(question)}\n"
        if hidden:
            check += f"### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS\n"
        plural = "s" if question["points"] > 1 else ""
        cells += [
            _cell("markdown", f"## Question {number} · {question['points']} point"
                  f"{plural}\n\n{question['prompt'].strip()}", f"{qid}_prompt"),
            _cell("code", f"{header}\n    ### BEGIN SOLUTION\n{body}\n"
                  "    ### END SOLUTION", f"{qid}_answer", solution=True,
                  locked=False),
            _cell("code", check + "marks", qid, grade=True,
                  points=question["points"]),
        ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    return notebook


def build(spec_path: Path, out: Path) -> Path:
    """The student notebook of one spec, built through nbgrader into ``out``."""
    return build_all([spec_path], out)[0]


def build_all(spec_paths: list[Path], out: Path) -> list[Path]:
    """The student notebooks of the specs, built into ``out`` by one nbgrader run
    (it takes seconds to start); every spec is checked before nbgrader runs."""
    course = out / "course"
    sources = {path.stem: source_notebook(load_spec(path)) for path in spec_paths}
    for name, notebook in sources.items():
        source = course / "source" / name / f"{name}.ipynb"
        source.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, source)
    shutil.copy(CONFIG, course / "nbgrader_config.py")
    run = subprocess.run([sys.executable, str(GENERATE), *sources], cwd=course,
                         env=nbgrader_environment(), capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"nbgrader generate_assignment {' '.join(sources)} "
                           f"failed:\n{run.stdout}{run.stderr}")
    students = []
    for name in sources:
        students.append(out / f"{name}.ipynb")
        shutil.copy(course / "release" / name / f"{name}.ipynb", students[-1])
    return students


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path,
                        help="assignment specs (default: assignments/*.toml)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "assignments",
                        help="where the notebooks go (default: build/assignments)")
    args = parser.parse_args(argv)
    specs = args.specs or sorted(HERE.glob("*.toml"))
    for spec in specs:
        if spec.suffix != ".toml" or not spec.is_file():
            parser.error(f"no such spec: {spec} (a .toml file in assignments/)")
    try:
        built = build_all([spec.resolve() for spec in specs], args.out.resolve())
    except SpecError as error:
        parser.error(str(error))
    for spec, student in zip(specs, built, strict=True):
        print(f"{spec.stem}: {student}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
