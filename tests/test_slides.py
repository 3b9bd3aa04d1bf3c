"""Every lesson presents as a reveal.js deck (``make slides``).

A teacher presents the committed, executed notebooks as slides, often with no
internet. The authors mark each cell with ``metadata.slideshow.slide_type``
(CONTRIBUTING.md); these tests build each deck with nbconvert's SlidesExporter and
the settings of ``make slides`` (deck/), without executing anything, and check that
the marks add up to a deck worth presenting. The browser tests open every deck in
headless Chromium with the network cut off: reveal.js and MathJax must load from the
copies beside the decks, the maths must be typeset, the arrow keys must move, and
every slide must fit the 1280x720 screen of a classroom projector, without scrolling
(``python deck/fit_slides.py --apply`` splits a slide that does not). The speaker
view (S) must show the current and the next slide, typeset, and the notes, from a
local web server and from the file system.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbconvert = pytest.importorskip("nbconvert")

REPO = Path(__file__).resolve().parents[1]
# The numbered lessons, then the appendices (A1_name.ipynb, ...), which present and
# publish like a lesson.
LESSONS = (sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
           + sorted((REPO / "notebooks").glob("A[0-9]_*.ipynb")))
DECK_CONFIG = REPO / "deck" / "jupyter_nbconvert_config.py"
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


def package_folder(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"{module} is not installed (make install)")
    return Path(spec.submodule_search_locations[0])


def copy_deck_assets(out: Path) -> None:
    """What ``make slides`` copies beside the decks, from the same packages."""
    reveal = package_folder("sphinx_revealjs") / "_static" / "revealjs"
    for part in ("dist", "plugin"):
        shutil.copytree(reveal / part, out / "reveal.js" / part)
    shutil.copytree(package_folder("jupyter_server_mathjax") / "static", out / "mathjax")


@pytest.fixture(scope="module")
def build_deck(tmp_path_factory):
    """Build a lesson's deck once per test module; returns the HTML file."""
    from nbconvert import SlidesExporter
    from traitlets.config.loader import PyFileConfigLoader

    loader = PyFileConfigLoader(DECK_CONFIG.name, path=str(DECK_CONFIG.parent))
    config = loader.load_config()
    out = tmp_path_factory.mktemp("slides")
    copy_deck_assets(out)
    built: dict[Path, Path] = {}

    def build(lesson: Path) -> Path:
        if lesson not in built:
            body, _ = SlidesExporter(config=config).from_filename(str(lesson))
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
    assert "--config deck/jupyter_nbconvert_config.py" in recipe.group(0), (
        "`make slides` must build with the offline settings the tests check")


@lessons
def test_deck_loads_nothing_from_the_network(lesson, build_deck):
    """Every script and stylesheet of the deck is a relative path beside it."""
    html = build_deck(lesson).read_text(encoding="utf-8")
    sources = re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"']([^\"']+)", html)
    remote = [url for url in sources if re.match(r"(https?:)?//", url)]
    assert sources, f"{lesson.name}: the deck loads no script at all"
    assert not remote, f"{lesson.name}: the deck loads {remote[:3]} from the network"
    for url in sources:
        path = build_deck(lesson).parent / url.split("?")[0]
        assert path.is_file(), f"{lesson.name}: {url} is missing beside the deck"


@lessons
def test_lesson_has_speaker_notes(lesson):
    """The README promises notes (S); a teacher needs at least one per lesson."""
    notes = [cell for cell in read(lesson).cells if slide_type(cell) == "notes"]
    assert notes, f"{lesson.name}: no cell of slide type 'notes'"


@lessons
def test_speaker_notes_stay_with_teachers(lesson):
    """A note is for the speaker view: collapsed in JupyterLab, kept off the site."""
    for index, cell in enumerate(read(lesson).cells):
        if slide_type(cell) != "notes":
            continue
        assert cell.source.startswith("Speaker notes."), (
            f"{lesson.name} cell {index}: a note opens with 'Speaker notes.', so that "
            "a teacher sees what it is")
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, (
            f"{lesson.name} cell {index}: a speaker note shown to learners; set "
            "metadata.jupyter.source_hidden")
        assert "remove-cell" in cell.metadata.get("tags", []), (
            f"{lesson.name} cell {index}: a speaker note without the remove-cell tag "
            "would show on the website")


# ------------------------------------------------------------------------ browser

SCREEN = {"width": 1280, "height": 720}
TOLERANCE_PX = 2

# Visit every slide and sub-slide; once MathJax has finished with it, measure it.
MEASURE_JS = """async () => {
    const mathjaxIdle = () => new Promise(done => MathJax.Hub.Queue(done));
    await mathjaxIdle();
    const slides = [];
    const stacks = Reveal.getHorizontalSlides();
    for (let h = 0; h < stacks.length; h++) {
        const inner = stacks[h].querySelectorAll(':scope > section').length || 1;
        for (let v = 0; v < inner; v++) {
            Reveal.slide(h, v);
            await mathjaxIdle();
            const slide = Reveal.getCurrentSlide();
            slides.push({
                where: `${h + 1}.${v + 1}`,
                title: (slide.querySelector('h1, h2, h3')?.textContent ?? '')
                    .replace('¶', '').trim().slice(0, 60),
                height: slide.scrollHeight,
                visible: slide.clientHeight,
            });
        }
    }
    return slides;
}"""

# Markdown text outside MathJax's own <script type="math/tex"> copies of the source.
MARKDOWN_TEXT_JS = """() => {
    const texts = [];
    for (const cell of document.querySelectorAll('.jp-MarkdownOutput')) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        let text = '';
        while (walker.nextNode()) {
            if (walker.currentNode.parentElement.closest('script')) continue;
            text += walker.currentNode.textContent;
        }
        texts.push(text);
    }
    return {
        texts: texts,
        typeset: document.querySelectorAll('.MathJax, .MathJax_Display').length,
        errors: document.querySelectorAll('.MathJax_Error, merror').length,
    };
}"""
RAW_TEX = re.compile(r"\$\$|\$[^$\s][^$]*\\[a-zA-Z]+[^$]*\$")


@pytest.fixture(scope="module")
def deck_browser(tmp_path_factory):
    """One headless Chromium, at the size of a 720p projector, for all decks."""
    from chromium import chromium_or_skip, launch

    sync_api = chromium_or_skip()
    with sync_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path_factory.mktemp("chromium"), SCREEN)
        try:
            yield context
        finally:
            context.close()


@pytest.mark.browser
@pytest.mark.timeout(180)
@lessons
def test_deck_presents_offline_and_fits_the_screen(lesson, build_deck, deck_browser):
    from chromium import block_network

    deck = build_deck(lesson)
    page = deck_browser.new_page()
    outside, failed = block_network(page, page)
    try:
        page.goto(deck.as_uri(), wait_until="load", timeout=60_000)
        page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=30_000)
        page.wait_for_function("window.MathJax && MathJax.isReady", timeout=60_000)
        page.keyboard.press("ArrowRight")
        moved = page.evaluate("Reveal.getIndices().h")
        slides = page.evaluate(MEASURE_JS)
        maths = page.evaluate(MARKDOWN_TEXT_JS)
    finally:
        page.close()

    assert not outside, f"{lesson.name}: requests left the machine: {outside[:3]}"
    # Chromium's own blank page before the deck is not a request of the deck.
    failed = [request for request in failed if not request.startswith("about:")]
    assert not failed, f"{lesson.name}: failed requests: {failed[:3]}"
    assert moved == 1, f"{lesson.name}: → did not move to the second slide"
    raw = [text[:120] for text in maths["texts"] if RAW_TEX.search(text)]
    assert not raw, f"{lesson.name}: TeX left untypeset: {raw[:3]}"
    assert maths["errors"] == 0, f"{lesson.name}: {maths['errors']} MathJax errors"
    has_tex = any("$" in "".join(cell.source) for cell in read(lesson).cells
                  if cell.cell_type == "markdown")
    assert maths["typeset"] > 0 or not has_tex, f"{lesson.name}: no formula typeset"

    tall = [s for s in slides if s["height"] > s["visible"] + TOLERANCE_PX]
    print(f"\n[slides] {lesson.stem}: {len(slides)} slides, {len(tall)} taller than "
          "the screen")
    assert not tall, (
        f"{lesson.name}: slides taller than the {SCREEN['height']}px screen (where, "
        f"title, height): {[(s['where'], s['title'], s['height']) for s in tall]}; "
        f"python deck/fit_slides.py --apply notebooks/{lesson.name} splits them")


# The first slide with a speaker note and maths whose next slide has maths too.
NOTED_SLIDE_JS = """async () => {
    await new Promise(done => MathJax.Hub.Queue(done));
    const slides = Reveal.getSlides();
    const maths = slide => slide && slide.querySelector('script[type^="math/tex"]');
    for (let i = 0; i + 1 < slides.length; i++) {
        const note = slides[i].querySelector('aside.notes');
        if (note && maths(slides[i]) && maths(slides[i + 1])) {
            return {...Reveal.getIndices(slides[i]), note: note.textContent.trim()};
        }
    }
    return null;
}"""
# What a preview pane shows once its MathJax is done: where its deck stands, how
# many formulas the slide shows typeset, and how many still as TeX source.
PANE_JS = """async () => {
    await new Promise(done => MathJax.Hub.Queue(done));
    const slide = Reveal.getCurrentSlide();
    return {
        where: Reveal.getIndices(),
        typeset: slide.querySelectorAll('.MathJax, .MathJax_Display').length,
        raw: [...slide.querySelectorAll('.MathJax_Preview')]
            .filter(preview => preview.textContent.trim()).length,
        errors: slide.querySelectorAll('.MathJax_Error, merror').length,
        text: slide.innerText.trim().slice(0, 40),
    };
}"""
SPEAKER_LESSON = REPO / "notebooks" / "00_why_vae.ipynb"


@contextlib.contextmanager
def deck_url(deck: Path, how: str):
    """The deck's address from the file system, or from a server on 127.0.0.1."""
    from chromium import serve

    if how == "file":
        yield deck.as_uri()
        return
    with serve(deck.parent) as url:
        yield f"{url}/{deck.name}"


@pytest.mark.browser
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["http", "file"])
def test_speaker_view_shows_both_slides_and_the_notes(how, build_deck, deck_browser):
    """S opens the speaker view: the current and the next slide, typeset, and the
    notes, with the network cut off (reveal.js's notes plugin, in iframes)."""
    from chromium import block_network

    deck = build_deck(SPEAKER_LESSON)
    context = deck_browser
    with deck_url(deck, how) as url:
        page = context.new_page()
        try:
            # The context's route covers the speaker window and its iframes too.
            outside, _ = block_network(context, page)
            page.goto(url, wait_until="load", timeout=60_000)
            page.wait_for_function("window.Reveal && Reveal.isReady() && window.MathJax"
                                   " && MathJax.isReady", timeout=60_000)
            noted = page.evaluate(NOTED_SLIDE_JS)
            assert noted, f"{deck.name}: no slide with a note and maths before maths"
            page.evaluate(f"Reveal.slide({noted['h']}, {noted['v'] or 0})")
            with context.expect_page(timeout=30_000) as opened:
                page.keyboard.press("s")
            speaker = opened.value
            speaker.wait_for_selector("#upcoming-slide iframe", state="attached",
                                      timeout=30_000)
            panes = {}
            for name in ("current", "upcoming"):
                frame = speaker.query_selector(f"#{name}-slide iframe").content_frame()
                frame.wait_for_function(
                    "window.Reveal && Reveal.isReady() && window.MathJax"
                    " && MathJax.isReady", timeout=60_000)
                panes[name] = frame.evaluate(PANE_JS)
            notes = speaker.locator(".speaker-controls-notes .value")
            notes.filter(has_text="Speaker notes.").wait_for(timeout=30_000)
            shown_notes = notes.inner_text()
        finally:
            for window in context.pages:
                window.close()
            context.unroute("**/*")

    assert not outside, f"{how}: requests left the machine: {outside[:3]}"
    current, upcoming = panes["current"], panes["upcoming"]
    assert (current["where"]["h"], current["where"]["v"] or 0) == (
        noted["h"], noted["v"] or 0), f"{how}: the current pane shows {current}"
    assert upcoming["where"] != current["where"], (
        f"{how}: the upcoming pane shows the current slide: {upcoming}")
    for name, pane in panes.items():
        assert pane["text"], f"{how}: the {name} pane is blank"
        assert pane["typeset"] > 0 and pane["raw"] == 0 and pane["errors"] == 0, (
            f"{how}: the {name} pane's maths is not typeset: {pane}")
    note = " ".join(noted["note"].split())[:60]
    assert " ".join(shown_notes.split()).startswith(note), (
        f"{how}: the speaker view shows {shown_notes[:80]!r}, not the slide's note")
