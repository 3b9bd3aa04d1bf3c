"""Every number the lessons' Markdown states is one that something shows.

A number typed into a Markdown cell of a notebook (lesson or solution) must be one of:

1. **printed by an output of the same notebook**: the written digits appear in an
   output as written ("2.5" against "2.5 s"), or some number in an output, rounded to
   as many decimals as the prose writes, gives the written number ("86.8" against an
   output "86.76"; "110" against "109.87"). Rounding goes one way only: the prose may
   say fewer digits than an output, never more, and "86.76" does not match "86.8";
2. **a literal in a code cell of the same notebook**, a setting the reader sees right
   there (``vc.budget(16, 2)``, ``lr=1e-3``, ``10_000``), matched by the same rule;
3. **a literature or setting constant** listed in ``tests/prose_constants.toml``, each
   with its source (a citation with its arXiv id or URL, or the code or setting it
   comes from), matched by the same rule.

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
- the ``## Exercises`` cell of a lesson: it sets tasks, not results, and its
  solutions notebook restates every task where this test checks it;
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

What it cannot see: a number is bound to the outputs of its notebook as a whole, not
to the one cell the sentence means, so a wrong number that happens to equal (or round
from) another printed number passes, and words such as "twice" or "most" are not
numbers. It catches stale and invented numbers, not every misreading. README.md is
checked for its citation years and its list of references only (see the test below).
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
FENCED_CODE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Exponents and indices in LaTeX: 10^{-38}, \\mathbb{R}^{32}, o_{33}, x^2.
SCRIPT = re.compile(r"[_^](?:\{[-\d\s]+\}|-?\d+)")
LESSON_NUMBER = re.compile(r"0\d")
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


def prose_numbers(markdown: str, cited: frozenset = frozenset()
                  ) -> list[tuple[str, str]]:
    """(number as written, its sentence) for each number that must be accounted for.

    ``cited`` holds the positions of citation years, checked separately.
    """
    text = prose_only(markdown)
    found = []
    for match in NUMBER.finditer(text):
        if match.start() in cited:
            continue
        whole, decimals = match.group(1), match.group(2) or ""
        if not decimals:
            if LESSON_NUMBER.fullmatch(whole):
                continue
            if int(whole.replace(",", "")) <= SMALL_INTEGER:
                continue
        found.append((whole + decimals, sentence_at(markdown, match.start())))
    return found


def sentence_at(text: str, position: int) -> str:
    starts = [0] + [m.end() for m in SENTENCE_END.finditer(text) if m.end() <= position]
    ends = [m.start() for m in SENTENCE_END.finditer(text) if m.start() > position]
    sentence = text[starts[-1]:ends[0] if ends else len(text)]
    return " ".join(sentence.split())[:200]


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


def code_numbers(source: str) -> set[Decimal]:
    """The numeric literals of a code cell (comments included): ``10_000`` is 10000."""
    return output_numbers(re.sub(r"(?<=\d)_(?=\d)", "", source))


def problems_in(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    known = constant_values()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            known |= output_numbers(cell_output_text(cell))
            known |= code_numbers(cell.source)
    years = citation_years()
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        where = f"{relative(path)} cell {index}"
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
        if is_exercises(cell) and "solutions" not in path.parts:
            continue
        for written, sentence in prose_numbers(cell.source, frozenset(cited)):
            if not matches(written, known):
                problems.append(f"{where}: {written!r} is printed by no output and is "
                                f"no listed constant: {sentence}")
    return problems


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
                "$\\frac{1}{2} 0.5 10^{-38} o_{33}$")
    assert [number for number, _ in prose_numbers(markdown)] == [
        "16", "3,280", "86.76", "0.5"]


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
