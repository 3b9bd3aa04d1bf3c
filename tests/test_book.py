"""The course website (``make book``) reads offline: navigation, maths, figures.

The site is built, as ``make book`` builds it, from the committed notebooks into a
temporary folder (nothing is executed), served on 127.0.0.1 as a teacher would
serve it (``python -m http.server``: opened from disk, the search lists its results
without their previews, which browsers do not fetch from file:// pages) and read in
headless Chromium with every request that leaves the machine aborted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The numbered lessons, then the appendices (A1_name.ipynb, ...), which present and
# publish like a lesson.
LESSONS = (sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
           + sorted((REPO / "notebooks").glob("A[0-9]_*.ipynb")))
BUILD_S = 600

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("myst_nb", reason="myst-nb is not installed (make install)")
    pytest.importorskip("sphinx_book_theme", reason="sphinx-book-theme is not installed")
    if not LESSONS:
        pytest.skip("no lessons yet")
    work = tmp_path_factory.mktemp("book")
    source = work / "src"
    shutil.copytree(REPO / "book", source)
    shutil.copytree(REPO / "notebooks", source / "notebooks")
    out = work / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(source), str(out)],
        capture_output=True, text=True, timeout=BUILD_S)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-3000:]}"
    return out


def test_make_book_builds_the_same_way():
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^book:.*?(?=^\S)", text, re.MULTILINE | re.DOTALL)
    assert recipe, "no `make book` target"
    assert "sphinx-build" in recipe.group(0) and "build/book" in recipe.group(0)
    assert "--execute" not in recipe.group(0)
    assert 'nb_execution_mode = "off"' in (REPO / "book" / "conf.py").read_text()


def test_every_lesson_has_a_page_and_a_download(site):
    for lesson in LESSONS:
        page = site / "notebooks" / f"{lesson.stem}.html"
        assert page.is_file(), f"no page for {lesson.name}"
        html = page.read_text(encoding="utf-8")
        assert f"_sources/notebooks/{lesson.name}" in html, (
            f"{page.name}: no download link for the notebook")
        assert (site / "_sources" / "notebooks" / lesson.name).is_file()
        remote = re.findall(
            r"<(?:script|link)\b[^>]*(?:src|href)=\"(https?:[^\"]+)", html)
        assert not remote, f"{page.name} loads {remote[:3]} from the network"


def test_speaker_notes_stay_off_the_site(site):
    """Notes open with "Speaker notes." (tests/test_slides.py): no page shows one."""
    for lesson in LESSONS:
        html = (site / "notebooks" / f"{lesson.stem}.html").read_text(encoding="utf-8")
        assert "Speaker notes." not in html, f"{lesson.name}: speaker notes on the site"


@pytest.fixture(scope="module")
def served(site):
    """The site's URL on a local HTTP server, stopped after the module."""
    from chromium import serve

    with serve(site) as url:
        yield url


@pytest.fixture
def browser_page(tmp_path):
    from chromium import block_network, chromium_or_skip, launch

    sync_api = chromium_or_skip()
    with sync_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path, {"width": 1280, "height": 900})
        page = context.new_page()
        page.outside, page.failed = block_network(context, page)
        try:
            yield page
        finally:
            context.close()


MATHS_JS = """() => ({
    typeset: document.querySelectorAll('.MathJax, .MathJax_Display').length,
    errors: document.querySelectorAll('.MathJax_Error, merror').length,
    raw: [...document.querySelectorAll('article .math.notranslate')]
        .filter(node => !node.querySelector('.MathJax, .MathJax_Display'))
        .map(node => node.textContent.slice(0, 80)),
    images: [...document.querySelectorAll('article img')]
        .map(img => ({src: img.src.split('/').pop(), ok: img.naturalWidth > 0})),
})"""


@pytest.mark.timeout(BUILD_S + 180)
def test_site_navigates_and_renders_offline(served, browser_page):
    page = browser_page
    first, second = LESSONS[0].stem, LESSONS[1].stem
    page.goto(f"{served}/index.html", wait_until="load")
    toc = page.locator("nav.bd-links a")
    titles = [text.strip() for text in toc.all_text_contents()]
    assert len(titles) >= len(LESSONS), f"table of contents: {titles}"

    # Into the first lesson from the table of contents, then on with "next".
    toc.filter(has_text=re.compile(rf"^\s*{first[:2]}\b")).first.click()
    page.wait_for_url(re.compile(rf"{first}\.html"))
    page.wait_for_function("window.MathJax && MathJax.isReady", timeout=60_000)
    page.evaluate("() => new Promise(done => MathJax.Hub.Queue(done))")
    state = page.evaluate(MATHS_JS)
    assert state["typeset"] > 0, "no formula typeset"
    assert state["errors"] == 0 and not state["raw"], f"maths left raw: {state['raw']}"
    assert state["images"], "the lesson shows no figure"
    broken = [image["src"] for image in state["images"] if not image["ok"]]
    assert not broken, f"figures that did not load: {broken}"

    page.locator("a.right-next").click()
    page.wait_for_url(re.compile(rf"{second}\.html"))
    page.locator("a.left-prev").wait_for()
    # Let MathJax finish this page (its fonts too) before leaving it: a request
    # still under way when the page is left counts as aborted.
    page.wait_for_function("window.MathJax && MathJax.isReady", timeout=60_000)
    page.evaluate("() => new Promise(done => MathJax.Hub.Queue(done))")
    page.wait_for_load_state("networkidle")

    # Sphinx's own search, which runs in the page from searchindex.js.
    page.goto(f"{served}/search.html?q=reparameterization", wait_until="load")
    results = page.locator("#search-results li a")
    results.first.wait_for(timeout=60_000)
    found = results.all_text_contents()
    assert any(first[:2] in text or "distributions" in text.lower()
               for text in found), f"search results: {found}"

    assert not page.outside, f"requests left the machine: {page.outside[:3]}"
    failed = [request for request in page.failed if not request.startswith("about:")]
    assert not failed, f"failed requests: {failed[:3]}"
