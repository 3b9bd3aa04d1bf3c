"""Every number the lessons' Markdown states is one that something near it shows.

A number typed into a Markdown cell of a notebook (lesson or solution) must be one of:

1. **printed by an output of a code cell near the sentence**: the written digits
   appear in an output as written ("2.5" against "2.5 s"), or some number in an
   output, rounded to as many decimals as the prose writes, gives the written number
   ("86.8" against an output "86.76"; "110" against "109.87"). Rounding goes one way
   only: the prose may say fewer digits than an output, never more, and "86.76" does
   not match "86.8";
2. **a literal in a code cell near the sentence**, a setting the reader sees right
   there (``vc.budget(16, 2)``, ``lr=1e-3``, ``10_000``), matched by the same rule;
3. **a literature or setting constant** listed in ``tests/prose_constants.toml``, each
   with its source (a citation with its arXiv id or URL, or the code or setting it
   comes from), matched by the same rule.

"Near" is where a reader looks for the cell a sentence speaks of: the code cells from
the sentence's section heading (``## 3 · ...``), but at most ``LOOK_BACK`` cells
back, to ``LOOK_AHEAD`` cells after the Markdown cell (not past the next section
heading). A number that some output prints only elsewhere in the notebook fails: it
is most often a stale number, or one read off another cell than the sentence points
to. A sentence may point further on purpose, and then says where:

- "section 5" (or "sections 4 and 5") binds its numbers to the code cells of those
  sections of the same notebook as well ("the lesson's section 2" of a solutions
  notebook, or "lesson 13's section 7", names another notebook and binds nothing);
- "the last cell" binds them to the notebook's last code cell (the run time);
- "exercise 3" binds them to the cells under a heading "### Exercise 3" (in a
  solutions notebook; a lesson's exercises are tasks, with no cells of their own).

A ``## Summary`` cell restates the lesson: its numbers must be numbers that the
lesson's own Markdown states before it (each checked where it stands), or be printed
near the Summary, or be constants.

The constants file sits beside this test rather than in ``notebooks/``: it is the
test's data, learners browsing the lessons in JupyterLab never need it, and each
lesson names its sources in its own prose anyway.

Outputs are read as committed (stream text, ``text/plain``, ``text/html`` and
``text/markdown``); nothing is executed, so the test is fast and needs no data.

What counts as a number: a run of digits, with an optional decimal part and optional
thousands commas ("3,280" is 3280). The sign is ignored, so prose may call a loss
"86.8" where an output prints the ELBO "-86.8". Not counted:

- integers from 0 to 10 (prose such as "two terms", "step 1", "β = 4");
- digits that are part of a word or a name: ``06_evaluation``, ``fc21``, ``2D``,
  ``x1``, ``deepbayes-2019`` (a letter or underscore touches them, or a hyphen
  joins them to a word);
- two-digit lesson numbers with a leading zero ("lesson 04", "lessons 06-07");
- URLs, link targets ``](...)``, arXiv ids, and the number of a heading
  ("## 3. Training");
- fenced code blocks (they are code, run or not, not claims);
- the ``## Exercises`` cell of a lesson and the cells that continue it: they set
  tasks, not results, and its solutions notebook restates every task where this test
  checks it;
- the number of a lesson ("lesson 13", "lessons 06 and 13"): it names a notebook;
- in LaTeX, exponents and indices (``10^{-38}``, ``\\mathbb{R}^{32}``, ``o_{33}``):
  they are notation, and the number they belong to is checked. Formula constants
  such as ``\\tfrac12`` or ``2\\pi`` fall under the first rule; nothing else in
  maths is exempt;
- the year of a citation of a listed work (below).

Years of citations ("Burda et al. 2016", "Kingma & Welling (2014)") are checked
against the ``[[reference]]`` entries of the constants file: a year written shortly
after a listed first author's surname must be the year of one of that author's
listed works. A year of an unlisted work is an unexplained number like any other.

The test lists every offending number with its notebook, cell index and sentence, so
that a writer can fix them all in one pass after re-executing a notebook.

What it cannot see: a number is bound to the outputs near its sentence, not to the one
cell the sentence means, so a wrong number that equals (or rounds from) another number
printed nearby passes, and words such as "twice" or "most" are not numbers. It catches
stale, invented and misplaced numbers, not every misreading. README.md is checked for
its citation years and its list of references only (see the test below).
"""

from __future__ import annotations

import re
import tomllib
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CONSTANTS_FILE = Path(__file__).with_name("prose_constants.toml")
SMALL_INTEGER = 10
# How far from a Markdown cell its numbers may be printed, in cells (see above).
LOOK_BACK, LOOK_AHEAD = 8, 3

# A number in prose: digits, optional thousands commas, optional decimals, not glued
# to a letter, an underscore or another digit on either side.
NUMBER = re.compile(
    r"(?<![\w.])(?<![A-Za-z]-)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w]|\.\d)")
# A number in an output: also scientific notation ("1.2e-05").
OUTPUT_NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*)(\.\d+)?(?:[eE]([-+]?\d+))?")
URL = re.compile(r"https?://\S+|www\.\S+")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
ARXIV = re.compile(r"arXiv:\s*\d{4}\.\d{4,5}(?:v\d+)?", re.IGNORECASE)
HEADING_NUMBER = re.compile(r"^(#+\s*)[\d.]+\s", re.MULTILINE)
FENCED_CODE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.MULTILINE | re.DOTALL)
# Exponents and indices in LaTeX: 10^{-38}, \\mathbb{R}^{32}, o_{33}, x^2.
SCRIPT = re.compile(r"[_^](?:\{[-\d\s]+\}|-?\d+)")
LESSON_NUMBER = re.compile(r"0\d")
# "lesson 13", "lessons 06 and 13", "Lessons 05, 06 and 13": names of notebooks (a
# listed name is 00 to 19, so that "lesson 13, 43 images" still counts the 43).
LESSON_NAMES = re.compile(r"\b[Ll]essons?\s+\d\d?(?:(?:\s*,\s*|\s+and\s+|\s+or\s+"
                          r"|\s*-\s*|\s+to\s+)[01]\d)*\b")
# A level-2 heading opens a section; "## 3 · Training" is section 3.
SECTION_HEADING = re.compile(r"^##(?!#)\s*(\d+)?", re.MULTILINE)
# "section 5", "sections 4 and 5", "Section 5's table"; not "the lesson's section 2"
# or "lesson 13's section 7", which are another notebook's.
SECTION_REFERENCE = re.compile(r"(?<!'s )(?<!\u2019s )\b[Ss]ections?\s+(\d+(?:(?:\s*,\s*"
                               r"|\s+and\s+|\s+or\s+|\s+to\s+)\d+)*)")
LAST_CELL_REFERENCE = re.compile(r"\bthe last (?:code )?cell\b", re.IGNORECASE)
# A solutions notebook's "### Exercise 3 · ..." and a sentence's "exercise 3".
EXERCISE_HEADING = re.compile(r"^#{2,4}\s*Exercise\s+(\d+)", re.MULTILINE)
EXERCISE_REFERENCE = re.compile(r"\b[Ee]xercises?\s+(\d+(?:(?:\s*,\s*|\s+and\s+"
                                r"|\s+or\s+|\s+to\s+)\d+)*)")
SENTENCE_END = re.compile(
    r"(?<=[.!?:])(?<!al\.)(?<!e\.g\.)(?<!i\.e\.)\s+|\n\s*\n|\n(?=\s*[-*|#])")


def notebooks() -> list[Path]:
    return sorted(path for path in NOTEBOOKS.rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in path.parts)


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def load_constants() -> dict:
    with open(CONSTANTS_FILE, "rb") as handle:
        return tomllib.load(handle)


def blank(match: re.Match) -> str:
    """The match replaced by spaces, so positions and sentences stay where they were."""
    return re.sub(r"\S", " ", match.group(0))


def prose_only(markdown: str) -> str:
    """Markdown with everything that is not a claim blanked out."""
    text = FENCED_CODE.sub(blank, markdown)
    text = URL.sub(blank, text)
    text = LINK_TARGET.sub(lambda m: "](" + " " * (len(m.group(0)) - 3) + ")", text)
    text = ARXIV.sub(blank, text)
    text = SCRIPT.sub(blank, text)
    return HEADING_NUMBER.sub(lambda m: m.group(1) + " " * (len(m.group(0))
                                                            - len(m.group(1))), text)


def numbers_with_positions(markdown: str, cited: frozenset = frozenset()
                           ) -> list[tuple[str, int]]:
    """(number as written, its position) for each number that must be accounted for.

    ``cited`` holds the positions of citation years, checked separately.
    """
    text = prose_only(markdown)
    lesson_names = {match.start(): match.end() for match in LESSON_NAMES.finditer(text)}
    found = []
    for match in NUMBER.finditer(text):
        if match.start() in cited:
            continue
        if any(start <= match.start() < end for start, end in lesson_names.items()):
            continue
        whole, decimals = match.group(1), match.group(2) or ""
        if not decimals:
            if LESSON_NUMBER.fullmatch(whole):
                continue
            if int(whole.replace(",", "")) <= SMALL_INTEGER:
                continue
        found.append((whole + decimals, match.start()))
    return found


def prose_numbers(markdown: str, cited: frozenset = frozenset()
                  ) -> list[tuple[str, str]]:
    """(number as written, its sentence) for each number that must be accounted for."""
    return [(written, sentence_at(markdown, position))
            for written, position in numbers_with_positions(markdown, cited)]


def sentence_span(text: str, position: int) -> str:
    """The whole sentence of ``text`` around ``position``."""
    starts = [0] + [m.end() for m in SENTENCE_END.finditer(text) if m.end() <= position]
    ends = [m.start() for m in SENTENCE_END.finditer(text) if m.start() > position]
    return text[starts[-1]:ends[0] if ends else len(text)]


def sentence_at(text: str, position: int) -> str:
    return " ".join(sentence_span(text, position).split())[:200]


def to_decimal(written: str) -> Decimal:
    return Decimal(written.replace(",", ""))


def output_numbers(text: str) -> set[Decimal]:
    numbers = set()
    for match in OUTPUT_NUMBER.finditer(text):
        whole, decimals, exponent = match.groups()
        candidates = [whole]
        if "," in whole:  # "60,000" and also a tuple such as "(128,784)"
            candidates += whole.split(",")
        for index, candidate in enumerate(candidates):
            digits = candidate + ((decimals or "") if index == 0 else "")
            try:
                value = Decimal(digits.replace(",", ""))
                if exponent and index == 0:
                    value = value.scaleb(int(exponent))
            except InvalidOperation:
                continue
            numbers.add(value)
    return numbers


def matches(written: str, known: set[Decimal]) -> bool:
    """Whether the written number is one of ``known`` as written or rounded."""
    value = to_decimal(written)
    places = -value.as_tuple().exponent
    quantum = Decimal(1).scaleb(-places)
    for number in known:
        if -number.as_tuple().exponent < places:
            continue  # the prose would claim digits that no output shows
        # Both conventions: Python's round() (half even) and school rounding.
        if any(number.quantize(quantum, rounding=mode) == value
               for mode in (ROUND_HALF_EVEN, ROUND_HALF_UP)):
            return True
    return False


def cell_output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        for kind in ("text/plain", "text/html", "text/markdown"):
            data = output.get("data", {}).get(kind)
            if data:
                parts.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(parts)


def constant_values() -> set[Decimal]:
    return {to_decimal(entry["value"]) for entry in load_constants()["constant"]}


def citation_years() -> dict[str, set[str]]:
    """First author's surname -> the years of the works the course cites by it."""
    years: dict[str, set[str]] = {}
    for work in load_constants()["reference"]:
        years.setdefault(work["first_author"], set()).add(str(work["year"]))
    return years


def citation_pattern(surname: str) -> re.Pattern:
    # "Burda et al. 2016", "Burda et al. (2016)", "Kingma & Welling, 2014",
    # "Kingma and Welling (ICLR 2014)": the year closely after the surname.
    # Markdown wraps lines anywhere, so the gap may hold a line break.
    return re.compile(re.escape(surname) + r"\b[^.]{0,40}?(?:et\s+al\.?)?.{0,45}?"
                      r"\(?(?:[A-Z][A-Za-z]*\s)?((?:19|20)\d\d)\b", re.DOTALL)


def is_exercises(cell) -> bool:
    return cell.source.lstrip().startswith("## Exercises")


def is_summary(cell) -> bool:
    return cell.source.lstrip().startswith("## Summary")


def exercise_cells(notebook) -> set[int]:
    """The ``## Exercises`` cell and the Markdown cells that continue it."""
    found, inside = set(), False
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        if is_exercises(cell):
            inside = True
        elif SECTION_HEADING.search(cell.source):
            inside = False
        if inside:
            found.add(index)
    return found


def code_numbers(source: str) -> set[Decimal]:
    """The numeric literals of a code cell (comments included): ``10_000`` is 10000."""
    return output_numbers(re.sub(r"(?<=\d)_(?=\d)", "", source))


class Outputs:
    """Which code cells are near a Markdown cell, and the numbers they show."""

    def __init__(self, notebook):
        self.cells = notebook.cells
        self.shown = {index: output_numbers(cell_output_text(cell))
                      | code_numbers(cell.source)
                      for index, cell in enumerate(self.cells)
                      if cell.cell_type == "code"}
        self.section_starts = []  # (cell index, section number or None)
        exercise_starts = []  # (cell index, exercise number or None)
        for index, cell in enumerate(self.cells):
            if cell.cell_type == "markdown":
                match = SECTION_HEADING.search(cell.source)
                if match:
                    number = int(match.group(1)) if match.group(1) else None
                    self.section_starts.append((index, number))
                exercise = EXERCISE_HEADING.search(cell.source)
                if exercise or match:  # a section heading ends an exercise too
                    exercise_starts.append(
                        (index, int(exercise.group(1)) if exercise else None))
        self.exercise_starts = exercise_starts

    def numbers(self, cells) -> set[Decimal]:
        found = set()
        for index in cells:
            found |= self.shown.get(index, set())
        return found

    def near(self, index: int) -> range:
        """The cells whose code and outputs a sentence of cell ``index`` may quote."""
        section = max([start for start, _ in self.section_starts if start <= index],
                      default=0)
        following = min([start for start, _ in self.section_starts if start > index],
                        default=len(self.cells))
        return range(max(section, index - LOOK_BACK),
                     min(index + LOOK_AHEAD, following - 1) + 1)

    def part(self, starts, number: int) -> range:
        """The cells from the heading numbered ``number`` to the next heading."""
        for position, (start, n) in enumerate(starts):
            if n == number:
                end = starts[position + 1][0] if position + 1 < len(starts) else len(
                    self.cells)
                return range(start, end)
        return range(0)

    def named_by(self, sentence: str) -> set[int]:
        """The cells a sentence points to explicitly, far or near."""
        cells = set()
        for pattern, starts in [(SECTION_REFERENCE, self.section_starts),
                                (EXERCISE_REFERENCE, self.exercise_starts)]:
            for match in pattern.finditer(sentence):
                for number in re.findall(r"\d+", match.group(1)):
                    cells.update(self.part(starts, int(number)))
        if LAST_CELL_REFERENCE.search(sentence) and self.shown:
            cells.add(max(self.shown))
        return cells

    def where(self, written: str) -> list[int]:
        """The code cells anywhere in the notebook that show the number."""
        return [index for index, numbers in self.shown.items()
                if matches(written, numbers)]


def problems_in_notebook(notebook, where_name: str, is_solutions: bool = False
                         ) -> list[str]:
    """Every unaccounted number of one notebook, with its cell and sentence."""
    outputs = Outputs(notebook)
    constants = constant_values()
    years = citation_years()
    skipped = set() if is_solutions else exercise_cells(notebook)
    stated: set[Decimal] = set()  # numbers the lesson's own prose states, checked
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        where = f"{where_name} cell {index}"
        text = prose_only(cell.source)
        cited = set()
        for surname, allowed in years.items():
            for match in citation_pattern(surname).finditer(text):
                cited.add(match.start(1))
                if match.group(1) not in allowed:
                    sentence = sentence_at(cell.source, match.start())
                    problems.append(
                        f"{where}: {surname} cited as {match.group(1)}, the constants "
                        f"file says {'/'.join(sorted(allowed))}: {sentence}")
        if index in skipped:
            continue
        near = constants | outputs.numbers(outputs.near(index))
        summary = is_summary(cell)
        if summary:
            near |= stated
        for written, position in numbers_with_positions(cell.source, frozenset(cited)):
            sentence = sentence_span(cell.source, position)
            known = near | outputs.numbers(outputs.named_by(sentence))
            if matches(written, known):
                if not summary:
                    stated.add(to_decimal(written))
                continue
            elsewhere = outputs.where(written)
            shown = " ".join(sentence.split())[:200]
            if elsewhere:
                problems.append(
                    f"{where}: {written!r} is printed only far from its sentence (in "
                    f"cell {', '.join(map(str, elsewhere))}); quote the cell beside "
                    f"it, or name its section (\"section N\"): {shown}")
            elif summary:
                problems.append(
                    f"{where}: {written!r} in the Summary is stated nowhere before it, "
                    f"printed by no output near it and is no listed constant: {shown}")
            else:
                problems.append(f"{where}: {written!r} is printed by no output and is "
                                f"no listed constant: {shown}")
    return problems


def problems_in(path: Path) -> list[str]:
    return problems_in_notebook(nbformat.read(path, as_version=4), relative(path),
                                is_solutions="solutions" in path.parts)


def citation_problems(text: str, where: str) -> list[str]:
    """A year after a listed first author that is not one of that author's years."""
    problems = []
    for surname, allowed in citation_years().items():
        for match in citation_pattern(surname).finditer(prose_only(text)):
            if match.group(1) not in allowed:
                problems.append(f"{where}: {surname} cited as {match.group(1)}: "
                                f"{sentence_at(text, match.start())}")
    return problems


def test_readme_cites_the_listed_years_and_links():
    """README.md: citation years as in the constants file, every listed work linked.

    The README's own numbers are not checked against outputs: its reference table is
    written by ``make reference`` from the notes in ``checkpoints/reference/``
    (tests/test_reference.py checks it against them), and its lessons' running times
    were read from the cell timestamps of full runs. Measurements of speed are not in
    the README at all: ``make benchmark`` writes them to ``benchmarks/README.md``.
    """
    readme = (REPO / "README.md").read_text()
    assert not citation_problems(readme, "README.md")
    missing = [work["link"] for work in load_constants()["reference"]
               if work["link"] not in readme]
    assert not missing, f"README's References lacks {missing}"


# --- the rules themselves --------------------------------------------------------

def test_rounding_goes_one_way():
    known = output_numbers("loss 86.76 nats, time 4.2 s, tensor([1.5000e-03])")
    assert matches("86.76", known) and matches("86.8", known) and matches("87", known)
    assert matches("4.2", known) and matches("0.0015", known)
    assert not matches("86.7", known)
    assert not matches("4.20", output_numbers("4.2"))
    assert not matches("6.5", known)


def test_what_counts_as_a_number():
    markdown = ("Lesson 04 (after deepbayes-2019) trains for 16 epochs "
                "(see `06_evaluation` and "
                "[Burda](https://arxiv.org/abs/1509.00519), arXiv:1509.00519); "
                "two terms, β = 4, fc21 and 3,280 passes give 86.76 nats.\n\n"
                "```python\nx = 123.4\n```\n## 12. Heading\n"
                "$\\frac{1}{2} 0.5 10^{-38} o_{33}$\n"
                "1. As lesson 13 and lessons 06 and 11 show, 25 steps; lesson 13, 43 "
                "images:\n\n"
                "   ```python\n   y = 456.7\n   ```\n")
    assert [number for number, _ in prose_numbers(markdown)] == [
        "16", "3,280", "86.76", "0.5", "25", "43"]


def fabricated(*cells) -> nbformat.NotebookNode:
    """A notebook of ("md", text) and ("code", source, what it printed) cells."""
    notebook = nbformat.v4.new_notebook()
    for kind, *content in cells:
        if kind == "md":
            notebook.cells.append(nbformat.v4.new_markdown_cell(content[0]))
        else:
            source, printed = content
            cell = nbformat.v4.new_code_cell(source, execution_count=1)
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                                   text=printed)]
            notebook.cells.append(cell)
    return notebook


TRAINING = [("md", "## 1 · Training"), ("code", "train()", "test loss 123.45 nats\n")]
SAMPLING = [("md", "## 2 · Sampling"), ("code", "sample()", "64 samples\n")]
CLAIM = ("md", "The test loss is 123.45 nats.")


def test_a_number_printed_only_far_from_its_sentence_fails():
    assert problems_in_notebook(fabricated(*TRAINING, CLAIM), "near") == []
    # The same sentence in the next section: the loss is printed, but not there.
    far = problems_in_notebook(fabricated(*TRAINING, *SAMPLING, CLAIM), "far")
    assert len(far) == 1 and "'123.45' is printed only far" in far[0], far
    assert "(in cell 1)" in far[0]
    # In its own section, but more than LOOK_BACK cells after the output.
    filler = [("md", "Words, and more words.")] * LOOK_BACK
    assert len(problems_in_notebook(fabricated(*TRAINING, *filler, CLAIM), "x")) == 1
    # A number printed nowhere at all.
    invented = problems_in_notebook(fabricated(*TRAINING, ("md", "It is 77.77.")), "x")
    assert len(invented) == 1 and "printed by no output" in invented[0]


def test_a_sentence_may_name_a_far_cell():
    named = ("md", "The test loss of section 1 is 123.45 nats.")
    assert problems_in_notebook(fabricated(*TRAINING, *SAMPLING, named), "x") == []
    wrong = ("md", "The test loss of section 2 is 123.45 nats.")
    assert len(problems_in_notebook(fabricated(*TRAINING, *SAMPLING, wrong), "x")) == 1
    timed = fabricated(("md", "Running it takes 12.5 s (the last cell says so)."),
                       *TRAINING, *SAMPLING, ("code", "print(time)", "ran in 12.5 s"))
    assert problems_in_notebook(timed, "x") == []
    solved = fabricated(("md", "## Exercises\n\n### Exercise 1 · Train"), *TRAINING[1:],
                        ("md", "### Exercise 2 · Sample"), *SAMPLING[1:],
                        *[("md", "Words.")] * LOOK_BACK,
                        ("md", "## Summary\n\n- A loss of 123.45 (exercise 1)."))
    assert problems_in_notebook(solved, "x", is_solutions=True) == []
    # "The lesson's section 1" or "lesson 13's section 1" is another notebook's.
    for other in ["The lesson's section 1 printed 123.45.",
                  "Lesson 13's section 1 printed 123.45."]:
        assert problems_in_notebook(fabricated(*TRAINING, *SAMPLING, ("md", other)),
                                    "x")


def test_a_summary_restates_what_the_lesson_says():
    stated = fabricated(*TRAINING, CLAIM, *SAMPLING,
                        ("md", "## Summary\n\n- The test loss is about 123.5 nats."))
    assert problems_in_notebook(stated, "x") == []
    unstated = fabricated(*TRAINING, *SAMPLING,
                          ("md", "## Summary\n\n- The test loss is 123.45 nats."))
    assert len(problems_in_notebook(unstated, "x")) == 1
    # A wrong number in the body is reported there, and restating it does not help.
    wrong = fabricated(*TRAINING, ("md", "The test loss is 321.45 nats."), *SAMPLING,
                       ("md", "## Summary\n\n- The test loss is 321.45 nats."))
    assert len(problems_in_notebook(wrong, "x")) == 2


def test_exercises_set_tasks_in_a_lesson_only():
    tasks = fabricated(("md", "## Exercises\n\n1. Train for 1234 steps."),
                       ("md", "2. Then for 4321 more."))
    assert problems_in_notebook(tasks, "lesson") == []
    assert len(problems_in_notebook(tasks, "solutions", is_solutions=True)) == 2


def test_citation_years_are_checked():
    pattern = citation_pattern("Burda")
    assert pattern.search("as Burda et al. (2015) report").group(1) == "2015"
    assert pattern.search("Burda et al., ICLR 2016").group(1) == "2016"
    assert pattern.search("(Burda et\nal., 2015)").group(1) == "2015"
    cited = frozenset({pattern.search("Burda et al. (2016) report").start(1)})
    assert prose_numbers("Burda et al. (2016) report", cited) == []
    assert prose_numbers("Burda et al. (2016) report") == [("2016", "Burda et al. "
                                                             "(2016) report")]


def test_every_constant_names_its_source():
    constants = load_constants()
    for entry in constants["constant"]:
        assert entry.get("source", "").strip(), f"{entry['value']} has no source"
        assert entry.get("what", "").strip(), f"{entry['value']} says not what it is"
        to_decimal(entry["value"])
    for work in constants["reference"]:
        assert work.get("link", "").startswith("https://"), work


@pytest.mark.parametrize("path", notebooks(), ids=relative)
def test_markdown_numbers_are_printed_or_cited(path):
    problems = problems_in(path)
    assert not problems, (
        f"{len(problems)} number(s) in the Markdown of {relative(path)} are shown by "
        "no output or code cell of the notebook and are not in "
        "tests/prose_constants.toml, or cite a year that the file does not list; quote "
        "what the outputs print, or add a sourced constant:\n" + "\n".join(problems))
