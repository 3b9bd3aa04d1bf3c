"""Find the lesson slides that run past the bottom of the 1280x720 screen; split them.

    python deck/fit_slides.py                          # report, for every lesson
    python deck/fit_slides.py notebooks/03_elbo.ipynb  # one lesson
    python deck/fit_slides.py --apply                  # split where it reports

It builds each deck as ``make slides`` does, measures every cell of every slide in
headless Chromium (tests/chromium.py) and walks down each slide: where a cell ends
below the screen, the slide is split before it, or before the Markdown cell that
introduces it (a code cell stays with the sentence above it). The split is a cell
whose slide type becomes ``subslide``; nothing else in the notebook changes. A cell
taller than the screen on its own cannot be split: the report names it, and its
output needs a smaller figure, or slide type ``skip`` if the slide makes sense
without it. Read the report, look at the deck, then commit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from chromium import chromium_executable, launch  # noqa: E402

SCREEN = {"width": 1280, "height": 720}
TOLERANCE_PX = 2
FIGURE_FLOOR = 0.75  # as in deck/offline-reveal/index.html.j2: figures shrink so far

# For every slide: its visible height and the top and bottom of each cell in it
# (cell ids as nbconvert writes them: id="cell-id=<the notebook cell's id>").
MEASURE_JS = """async () => {
    await new Promise(done => MathJax.Hub.Queue(done));
    const slides = [];
    const stacks = Reveal.getHorizontalSlides();
    for (let h = 0; h < stacks.length; h++) {
        const inner = stacks[h].querySelectorAll(':scope > section').length || 1;
        for (let v = 0; v < inner; v++) {
            Reveal.slide(h, v);
            await new Promise(done => MathJax.Hub.Queue(done));
            const slide = Reveal.getCurrentSlide();
            const top = slide.getBoundingClientRect().top, scale = Reveal.getScale();
            const cells = [...slide.querySelectorAll('[id^="cell-id="]')].map(cell => {
                const box = cell.getBoundingClientRect();
                const figures = [...cell.querySelectorAll('.jp-OutputArea-output img')]
                    .reduce((sum, image) => sum + image.offsetHeight, 0);
                return {id: cell.id.slice('cell-id='.length), figures: figures,
                        top: (box.top - top) / scale,
                        bottom: (box.bottom - top) / scale};
            });
            slides.push({where: `${h + 1}.${v + 1}`, visible: slide.clientHeight,
                         height: slide.scrollHeight, cells: cells});
        }
    }
    return slides;
}"""


def build(lesson: Path, out: Path) -> Path:
    """The lesson's deck in ``out``, with the settings of ``make slides``."""
    config = PyFileConfigLoader(
        "jupyter_nbconvert_config.py", path=str(REPO / "deck")).load_config()
    body, _ = SlidesExporter(config=config).from_filename(str(lesson))
    deck = out / f"{lesson.stem}.slides.html"
    deck.write_text(body, encoding="utf-8")
    return deck


def copy_assets(out: Path) -> None:
    """reveal.js and MathJax beside the decks, from the packages ``make slides`` uses."""
    import jupyter_server_mathjax
    import sphinx_revealjs

    reveal = Path(sphinx_revealjs.__file__).parent / "_static" / "revealjs"
    for part in ("dist", "plugin"):
        shutil.copytree(reveal / part, out / "reveal.js" / part)
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static",
                    out / "mathjax")


def splits(slide: dict, cells: dict) -> tuple[list[str], list[str]]:
    """Ids of the cells that should start a sub-slide, and of cells too tall alone."""
    limit = slide["visible"] + TOLERANCE_PX
    shown = [cell for cell in slide["cells"] if cell["bottom"] > cell["top"]]
    starts, too_tall = [], []
    first, offset = 0, 0.0  # the current sub-slide starts at shown[first]

    def alone(cell):  # with its figures as small as the deck makes them
        height = cell["bottom"] - cell["top"] - (1 - FIGURE_FLOOR) * cell["figures"]
        if height > limit:
            too_tall.append((cell["id"], height))
    for index, cell in enumerate(shown):
        if cell["bottom"] - offset <= limit:
            continue
        if index == first:
            alone(cell)
            continue
        split = index
        before = shown[index - 1]
        if (index - 1 > first and cells[cell["id"]].cell_type == "code"
                and cells[before["id"]].cell_type == "markdown"
                and cell["bottom"] - before["top"] <= limit):
            split = index - 1
        starts.append(shown[split]["id"])
        first, offset = split, shown[split]["top"]
        if cell["bottom"] - offset > limit:
            alone(cell)
    return starts, too_tall


def fit(lesson: Path, context, out: Path, apply: bool) -> int:
    notebook = nbformat.read(lesson, as_version=4)
    cells = {cell.id: cell for cell in notebook.cells}
    page = context.new_page()
    page.add_init_script("window.deckFitsFigures = false")  # full-size figures
    try:
        page.goto(build(lesson, out).as_uri(), wait_until="load")
        page.wait_for_function("window.Reveal && Reveal.isReady() && window.MathJax"
                               " && MathJax.isReady", timeout=60_000)
        slides = page.evaluate(MEASURE_JS)
    finally:
        page.close()
    tall = [s for s in slides if s["height"] > s["visible"] + TOLERANCE_PX]
    print(f"{lesson.stem}: {len(slides)} slides, {len(tall)} taller than the screen")
    proposed = []
    for slide in tall:
        starts, too_tall = splits(slide, cells)
        proposed += starts
        for cell_id in starts:
            print(f"  {slide['where']} ({slide['height']}px): split before cell "
                  f"{cell_id}: {cells[cell_id].source.splitlines()[0][:60]!r}")
        for cell_id, height in too_tall:
            print(f"  {slide['where']}: cell {cell_id} alone is {height:.0f}px tall, "
                  f"taller than the screen ({slide['visible']}px): a smaller output, "
                  "or slide type 'skip'")
    if apply and proposed:
        for cell_id in proposed:
            cells[cell_id].metadata.setdefault("slideshow", {})["slide_type"] = (
                "subslide")
        nbformat.write(notebook, lesson)
        print(f"  {len(proposed)} cells now start a sub-slide in {lesson.name}")
    return len(tall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", type=Path,
                        help="lesson notebooks (default: every one in notebooks/)")
    parser.add_argument("--apply", action="store_true",
                        help="write the proposed splits into the notebooks")
    args = parser.parse_args(argv)
    lessons = args.lessons or sorted((REPO / "notebooks").glob("*.ipynb"))
    missing = [str(path) for path in lessons if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if chromium_executable() is None:
        parser.error("no Chromium found: apt-get install chromium, or set "
                     "VAE_COURSE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        out = Path(folder)
        copy_assets(out)
        context = launch(playwright, out, SCREEN)
        try:
            tall = sum(fit(lesson, context, out, args.apply) for lesson in lessons)
        finally:
            context.close()
    return 1 if tall and not args.apply else 0


if __name__ == "__main__":
    sys.exit(main())
