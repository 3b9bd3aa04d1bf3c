"""Every lesson presents as a reveal.js deck (``make slides``).

A teacher presents the committed, executed notebooks as slides. The authors mark
each cell with ``metadata.slideshow.slide_type`` (CONTRIBUTING.md); these tests
build each deck with nbconvert's SlidesExporter, as ``make slides`` does, without
executing anything, and check that the marks add up to a deck worth presenting.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbconvert = pytest.importorskip("nbconvert")

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
MIN_SLIDES = 4
STDERR_MIME = "application/vnd.jupyter.stderr"
# A traceback, as opposed to a warning that also goes to stderr.
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ",
                        re.MULTILINE)

lessons = pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])


def slide_type(cell) -> str | None:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type")


class DeckParser(HTMLParser):
    """Counts top-level ``<section>``s (slides) and collects stderr output text."""

    def __init__(self):
        super().__init__()
        self.section_depth = 0
        self.slides = 0
        self.subslides = 0
        self.div_depth = 0
        self.stderr_depth = None  # div depth at which a stderr output opened
        self.stderr: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            if self.section_depth == 0:
                self.slides += 1
            else:
                self.subslides += 1
            self.section_depth += 1
        elif tag == "div":
            self.div_depth += 1
            if self.stderr_depth is None and dict(attrs).get("data-mime-type") == (
                    STDERR_MIME):
                self.stderr_depth = self.div_depth
                self.stderr.append("")

    def handle_endtag(self, tag):
        if tag == "section":
            self.section_depth -= 1
        elif tag == "div":
            if self.stderr_depth == self.div_depth:
                self.stderr_depth = None
            self.div_depth -= 1

    def handle_data(self, data):
        if self.stderr_depth is not None:
            self.stderr[-1] += data


@pytest.fixture(scope="module")
def build_deck(tmp_path_factory):
    """Build a lesson's deck once per test module; returns the HTML file."""
    from nbconvert import SlidesExporter

    out = tmp_path_factory.mktemp("slides")
    built: dict[Path, Path] = {}

    def build(lesson: Path) -> Path:
        if lesson not in built:
            body, _ = SlidesExporter().from_filename(str(lesson))
            target = out / f"{lesson.stem}.slides.html"
            target.write_text(body, encoding="utf-8")
            built[lesson] = target
        return built[lesson]

    return build


def read(lesson: Path):
    return nbformat.read(lesson, as_version=4)


@lessons
def test_every_cell_has_a_known_slide_type(lesson):
    notebook = read(lesson)
    wrong = [(index, slide_type(cell)) for index, cell in enumerate(notebook.cells)
             if slide_type(cell) not in SLIDE_TYPES]
    assert not wrong, (
        f"{lesson.name}: cells without a slide type from {sorted(SLIDE_TYPES)} "
        f"(cell index, type): {wrong[:10]}")


@lessons
def test_deck_opens_on_a_slide_and_has_enough_of_them(lesson):
    notebook = read(lesson)
    shown = [cell for cell in notebook.cells
             if slide_type(cell) not in ("skip", "notes")]
    assert shown, f"{lesson.name}: every cell is skipped or a note"
    assert slide_type(shown[0]) == "slide", (
        f"{lesson.name}: the first shown cell (the title) must have slide type 'slide'")
    slides = sum(slide_type(cell) == "slide" for cell in notebook.cells)
    assert slides >= MIN_SLIDES, f"{lesson.name}: {slides} slides, want {MIN_SLIDES}+"


@lessons
def test_deck_has_one_section_per_slide(lesson, build_deck):
    html = build_deck(lesson).read_text(encoding="utf-8")
    assert "<section" in html
    parser = DeckParser()
    parser.feed(html)
    parser.close()
    expected = sum(slide_type(cell) == "slide" for cell in read(lesson).cells)
    assert parser.section_depth == 0, f"{lesson.name}: unbalanced <section> tags"
    assert parser.slides == expected, (
        f"{lesson.name}: the deck has {parser.slides} slides, the notebook marks "
        f"{expected} cells as 'slide'")


@lessons
def test_deck_shows_no_error_output(lesson, build_deck):
    notebook = read(lesson)
    failed = [index for index, cell in enumerate(notebook.cells)
              if cell.cell_type == "code"
              and any(output.output_type == "error" for output in cell.outputs)]
    assert not failed, f"{lesson.name}: error outputs in cells {failed}"
    parser = DeckParser()
    parser.feed(build_deck(lesson).read_text(encoding="utf-8"))
    tracebacks = [text for text in parser.stderr if ERROR_TEXT.search(text)]
    assert not tracebacks, f"{lesson.name}: the deck shows a traceback:\n{tracebacks[0]}"


def test_make_slides_renders_without_executing():
    makefile = REPO / "Makefile"
    if not makefile.is_file():
        pytest.skip("no Makefile yet")
    text = makefile.read_text()
    assert re.search(r"^slides:", text, re.MULTILINE), "no `make slides` target"
    recipe = re.search(r"nbconvert --to slides[^\n]*", text)
    assert recipe, "`make slides` does not call nbconvert --to slides"
    assert "--execute" not in recipe.group(0), "slides render the committed outputs"
