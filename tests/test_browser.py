"""End-to-end tests: run lessons in a real JupyterLab, driven by headless Chromium.

They check what a learner sees, which the nbval tests cannot: the notebook opens in
JupyterLab, Run All Cells finishes without an error, the figures render, and the
latent explorer of lesson 05 redraws its digit when a slider moves.

Run them alone with ``pytest -m browser``; ``make test`` runs them with the rest.
They need Debian's Chromium (``apt-get install chromium``) and Playwright's Python
package; they never download a browser. ``VAE_COURSE_CHROMIUM`` points them at
another Chromium binary. A missing browser skips them with the reason.

The server works on a copy of ``notebooks/`` with the outputs stripped, so every
figure and execution count the test sees comes from this run, the committed
notebooks are never touched, and JupyterLab's settings, workspaces, runtime files
and the kernel's IPython profile live under pytest's temporary folder, not in $HOME.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from chromium import block_network, chromium_or_skip, launch

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def makefile_lab_settings() -> str:
    """The settings folder that ``make lab`` hands JupyterLab (None if it hands none)."""
    recipe = subprocess.run(["make", "-n", "-o", ".venv/.installed-stamp", "lab"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    found = re.search(r"--LabApp\.app_settings_dir=(\S+)", recipe)
    return found.group(1) if found else None


LAB_SETTINGS = makefile_lab_settings() or "jupyter-settings"
SERVER_START_S = 60
PAGE_LOAD_S = 90
RUN_ALL_S = 240
EXPLORER_CLASS_IMAGE = "vae-explorer-image"
EXPLORER_CLASS_SLIDER = "vae-explorer-slider"
# An IPython traceback, as opposed to a warning that also goes to stderr.
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ",
                        re.MULTILINE)


# --------------------------------------------------------------------------- server


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    log: Path

    def api(self, path: str, method: str = "GET", timeout: float = 10.0):
        """Call the server's REST API with the token; returns the decoded JSON."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def page_url(self, notebook: str) -> str:
        # ``reset`` starts from an empty workspace, so only this notebook opens.
        return f"{self.url}/lab/tree/{notebook}?reset&token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def strip_outputs(folder: Path) -> None:
    """Clear outputs, execution counts and saved widget state of every notebook."""
    for path in folder.rglob("*.ipynb"):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        for cell in notebook.get("cells", []):
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
        notebook.get("metadata", {}).pop("widgets", None)
        path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")


def write_lab_settings(settings_dir: Path) -> None:
    """User settings for the throwaway lab: no news feed, no update check."""
    folder = settings_dir / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@contextmanager
def running_lab(source: Path, workdir: Path):
    """Start JupyterLab on a stripped copy of ``source``; always stop it afterwards."""
    root = workdir / "notebooks"
    shutil.copytree(source, root)
    strip_outputs(root)
    state = workdir / "jupyter-state"
    env = dict(os.environ)
    env.update({
        "VAE_COURSE_SMOKE": "1",
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "lab-workspaces"),
        "IPYTHONDIR": str(state / "ipython"),
        # The kernel imports vae_course from this checkout even when it is not
        # installed into the environment.
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    write_lab_settings(state / "lab-settings")
    port = free_port()
    token = secrets.token_hex(24)
    command = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={state / 'lab-workspaces'}",
        # The settings make lab uses (autosave off), read from the checkout.
        f"--LabApp.app_settings_dir={REPO / LAB_SETTINGS}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.shutdown_no_activity_timeout=900",
        "--MappingKernelManager.cull_idle_timeout=900",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    log = workdir / "jupyterlab.log"
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_for_server(server, process)
            yield server
        finally:
            stop_lab(server, process)


def wait_for_server(server: LabServer, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.api("/api/status", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.25)
    raise RuntimeError(
        f"JupyterLab did not answer within {SERVER_START_S} s:\n{server.log_tail()}")


def stop_lab(server: LabServer, process: subprocess.Popen) -> None:
    """Ask the server to shut down its kernels and itself, then insist."""
    if process.poll() is None:
        try:
            server.api("/api/shutdown", method="POST", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not NOTEBOOKS.is_dir():
        pytest.skip("notebooks/ does not exist yet")
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed")
    workdir = tmp_path_factory.mktemp("lab")
    with running_lab(NOTEBOOKS, workdir) as server:
        yield server


# -------------------------------------------------------------------------- browser


@pytest.fixture
def page(lab, tmp_path):
    sync_api = chromium_or_skip()
    with sync_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path, {"width": 1400, "height": 1000})
        page = context.pages[0] if context.pages else context.new_page()
        try:
            yield page
        finally:
            context.close()
            close_sessions(lab)


def close_sessions(lab: LabServer) -> None:
    """Shut down the kernels a test started, so the next test has the CPU."""
    try:
        for session in lab.api("/api/sessions"):
            lab.api(f"/api/sessions/{session['id']}", method="DELETE", timeout=30)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        pass


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5,
               pause=time.sleep):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    Where the page's requests go through a route (a blocked network), pass
    ``pause=page_pause(page)``: Playwright's synchronous API serves a route only
    while Python is inside one of its calls, so ``time.sleep`` would hold every
    request of the page, the kernel's among them, until the next poll.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        pause(interval)


def page_pause(page):
    """A pause that keeps serving the page's routes (see :func:`wait_until`)."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)


def kernel_state(lab: LabServer, notebook: str) -> str | None:
    """The execution state the server reports for the notebook's kernel.

    A RISE slideshow's session has an id for its path and the notebook as its name.
    """
    for session in lab.api("/api/sessions"):
        if notebook in (session.get("path"), session.get("name")) \
                and session.get("kernel"):
            return session["kernel"].get("execution_state")
    return None


# The notebook on screen; a hidden panel would also match plain ``.jp-Notebook``.
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

CELL_STATE_JS = """(panelSelector) => {
    const panel = document.querySelector(panelSelector);
    if (!panel) return null;
    const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
    const texts = prompts.map(p => p.textContent.trim());
    return {
        code: texts.length,
        counted: texts.filter(t => /^\\[\\d+\\]:$/.test(t)).length,
        busy: texts.filter(t => t === '[*]:').length,
        stderr: [...panel.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        )].map(node => node.textContent),
        images: panel.querySelectorAll('.jp-RenderedImage img').length,
        indicator: panel.querySelector('.jp-Notebook-ExecutionIndicator')
            ?.getAttribute('data-status') ?? null,
    };
}"""


def cell_state(page) -> dict:
    return page.evaluate(CELL_STATE_JS, PANEL)


def error_outputs(state: dict) -> list[str]:
    """The stderr outputs that are tracebacks rather than warnings."""
    return [text for text in state["stderr"] if ERROR_TEXT.search(text)]


def open_notebook(page, lab: LabServer, notebook: str) -> None:
    page.goto(lab.page_url(notebook), wait_until="domcontentloaded",
              timeout=PAGE_LOAD_S * 1000)
    page.locator(f"{PANEL} .jp-Cell").first.wait_for(timeout=PAGE_LOAD_S * 1000)
    # A notebook without kernel metadata asks which kernel to start.
    select_kernel = page.locator(".jp-Dialog .jp-mod-accept")
    if select_kernel.count():
        select_kernel.first.click()
    wait_until(lambda: kernel_state(lab, notebook) == "idle", PAGE_LOAD_S,
               "the kernel to start and go idle")
    indicator = f'{PANEL} .jp-Notebook-ExecutionIndicator[data-status="idle"]'
    page.locator(indicator).wait_for(timeout=PAGE_LOAD_S * 1000)


def run_all_cells(page) -> None:
    """Run → Run All Cells, through JupyterLab's menu bar."""
    page.locator(f"{PANEL} .jp-Notebook").click(position={"x": 5, "y": 5})
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).click()
    page.locator(".lm-Menu-item:visible",
                 has_text=re.compile(r"^\s*Run All Cells\s*$")).click()


def wait_for_run(page, lab: LabServer, notebook: str) -> dict:
    """Wait until the kernel is idle and every code cell ran (or one failed)."""
    started = time.monotonic()

    def finished():
        state = cell_state(page)
        if state is None or state["busy"] or state["indicator"] != "idle":
            return None
        if state["counted"] < state["code"] and not error_outputs(state):
            return None
        if kernel_state(lab, notebook) != "idle":
            return None
        return state

    # Two idle readings a second apart, so a gap between cells is not mistaken
    # for the end of the run.
    def settled():
        first = finished()
        if not first:
            return None
        time.sleep(1.0)
        return finished()

    state = wait_until(settled, RUN_ALL_S, f"Run All Cells in {notebook} to finish")
    print(f"\n[browser] {notebook}: ran {state['counted']}/{state['code']} code cells "
          f"in {time.monotonic() - started:.1f} s")
    return state


def save_and_read(page, lab: LabServer, notebook: str) -> dict:
    """Save through the UI (Ctrl+S) and read back what the server wrote.

    The server writes a notebook atomically: it keeps a copy as ``.~name`` while it
    writes, and a read that finds the file half written puts that copy back, which
    breaks the write under way. So the file is read only once it has changed and
    the copy is gone.
    """
    path, backup = lab.root / notebook, lab.root / f".~{notebook}"
    before = path.stat().st_mtime_ns
    page.locator(f"{PANEL} .jp-Notebook").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")

    def saved():
        if backup.exists() or not path.exists() or path.stat().st_mtime_ns == before:
            return None  # not written yet, or being written
        model = lab.api(f"/api/contents/{notebook}?content=1")["content"]
        code = [c for c in model["cells"] if c["cell_type"] == "code"]
        return model if code and all(c.get("execution_count") for c in code) else None

    return wait_until(saved, 30, f"{notebook} to be saved with execution counts")


def run_lesson(page, lab: LabServer, notebook: str, tmp_path: Path) -> dict:
    """Open ``notebook``, run every cell through the UI and check the result."""
    started = time.monotonic()
    open_notebook(page, lab, notebook)
    print(f"\n[browser] {notebook}: opened, kernel idle after "
          f"{time.monotonic() - started:.1f} s")
    run_all_cells(page)
    state = wait_for_run(page, lab, notebook)
    screenshot = tmp_path / f"{Path(notebook).stem}.png"
    figures = page.locator(f"{PANEL} .jp-RenderedImage img")
    if figures.count():
        figures.first.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot))
    print(f"[browser] screenshot: {screenshot}")

    errors = error_outputs(state)
    assert not errors, f"{notebook} shows an error output:\n{errors[0][-2000:]}"
    assert state["counted"] == state["code"] > 0, (
        f"{notebook}: only {state['counted']} of {state['code']} code cells ran")

    saved = save_and_read(page, lab, notebook)
    failed = [output for cell in saved["cells"] if cell["cell_type"] == "code"
              for output in cell.get("outputs", []) if output["output_type"] == "error"]
    assert not failed, f"{notebook} saved an error output: {failed[0].get('ename')}"
    print(f"[browser] {notebook}: {state['images']} figure(s), total "
          f"{time.monotonic() - started:.1f} s")
    return state


# ---------------------------------------------------------------------------- tests


def lesson_missing(notebook: str):
    """Skip, before any server starts, a test whose lesson is not written yet."""
    return pytest.mark.skipif(not (NOTEBOOKS / notebook).is_file(),
                              reason=f"notebooks/{notebook} does not exist yet")


def test_lab_does_not_autosave_the_lessons(lab):
    """Running a lesson must not rewrite the committed notebook behind the learner's
    back: make lab's settings turn JupyterLab's autosave off."""
    assert makefile_lab_settings() == "jupyter-settings"
    plugin = lab.api("/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    assert plugin["schema"]["properties"]["autosave"]["default"] is False
    assert plugin["settings"].get("autosave", False) is False


@pytest.mark.timeout(300)
@lesson_missing("01_distributions.ipynb")
def test_lesson_01_runs_in_jupyterlab(lab, page, tmp_path):
    notebook = "01_distributions.ipynb"
    state = run_lesson(page, lab, notebook, tmp_path)
    assert state["images"] >= 1, f"{notebook} rendered no figure"


@pytest.mark.timeout(300)
@lesson_missing("05_visualization.ipynb")
def test_lesson_05_latent_explorer_redraws(lab, page, tmp_path):
    """The explorer of ``vc.plots.latent_explorer``: sliders and image carry the
    CSS classes ``vae-explorer-slider`` and ``vae-explorer-image``."""
    notebook = "05_visualization.ipynb"
    run_lesson(page, lab, notebook, tmp_path)

    image = page.locator(f"{PANEL} img.{EXPLORER_CLASS_IMAGE}").first
    image.wait_for(timeout=30_000)
    slider = page.locator(f"{PANEL} .{EXPLORER_CLASS_SLIDER}").first
    slider.wait_for(timeout=30_000)
    image.scroll_into_view_if_needed()
    before_src = image.get_attribute("src")
    before_pixels = image.screenshot()

    # Keyboard, as a learner without a mouse would: focus the handle, step right.
    handle = slider.locator(".noUi-handle, [role='slider']").first
    before_value = slider.locator(".widget-readout").first.text_content()
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")
    wait_until(lambda: image.get_attribute("src") != before_src, 30,
               "the explorer image to change after moving the slider")
    after_value = slider.locator(".widget-readout").first.text_content()
    time.sleep(0.5)  # let the new PNG paint before comparing pixels
    after_pixels = image.screenshot()
    screenshot = tmp_path / "05_explorer_moved.png"
    slider.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot))
    print(f"[browser] slider {before_value!r} -> {after_value!r}; "
          f"screenshot: {screenshot}")
    assert after_value != before_value, "the slider's readout did not move"
    assert after_pixels != before_pixels, "the decoded digit looks the same"


RISE_STATE_JS = """() => {
    const reveal = document.querySelector('.reveal');
    const current = reveal?.querySelector('.slides section.present:not(.stack)')
        ?? reveal?.querySelector('.slides section.present');
    const indices = window.Reveal?.getIndices?.() ?? null;
    return {
        reveal: !!reveal,
        ready: !!reveal && reveal.classList.contains('ready'),
        indices: indices,
        total: reveal ? reveal.querySelectorAll('.slides section').length : 0,
        text: current ? current.innerText : '',
        maths: reveal ? reveal.querySelectorAll('mjx-container, .MathJax').length : 0,
        raw: reveal ? [...reveal.querySelectorAll('.jp-RenderedMarkdown')]
            .map(node => node.innerText).filter(text => text.includes('$$')).length : 0,
    };
}"""


@pytest.mark.timeout(180)
@lesson_missing("03_elbo.ipynb")
def test_lesson_03_presents_with_rise(lab, page, tmp_path):
    """RISE (jupyterlab-rise) presents the live notebook, with no internet."""
    notebook = "03_elbo.ipynb"
    outside, failed_requests = block_network(page, page)
    started = time.monotonic()
    page.goto(f"{lab.url}/rise/{notebook}?token={lab.token}",
              wait_until="domcontentloaded", timeout=PAGE_LOAD_S * 1000)
    page.locator(".reveal .slides section").first.wait_for(timeout=PAGE_LOAD_S * 1000)
    pause = page_pause(page)
    first = wait_until(lambda: (s := page.evaluate(RISE_STATE_JS))["maths"] and s,
                       60, "RISE to typeset the maths of the title slide", pause=pause)
    print(f"\n[browser] RISE {notebook}: {first['total']} sections, "
          f"{first['maths']} formulas typeset after {time.monotonic() - started:.1f} s")
    assert first["raw"] == 0, "a Markdown cell still shows raw $$ TeX"
    assert first["text"].lstrip().startswith("03"), first["text"][:200]

    # Present as a teacher does: once the kernel is up (a cell sent before that can
    # be lost), run the setup cell in place, then step on.
    wait_until(lambda: kernel_state(lab, notebook) == "idle", PAGE_LOAD_S,
               "the slideshow's kernel to start and go idle", pause=pause)
    page.locator(".reveal section.present .jp-CodeCell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")
    prompt = page.locator(".reveal .jp-CodeCell .jp-InputArea-prompt").first
    try:
        wait_until(lambda: prompt.text_content().strip() == "[1]:",
                   90, "the setup cell to run in the slideshow", pause=pause)
    except AssertionError as error:
        raise AssertionError(f"{error}; its prompt shows "
                             f"{prompt.text_content().strip()!r}, the kernel is "
                             f"{kernel_state(lab, notebook)!r}") from None
    page.keyboard.press("Escape")
    page.keyboard.press("ArrowRight")
    second = wait_until(
        lambda: (s := page.evaluate(RISE_STATE_JS))["text"] != first["text"] and s,
        15, "the slideshow to advance", pause=pause)
    page.screenshot(path=str(tmp_path / "03_rise.png"))
    assert "derivation" in second["text"].lower(), second["text"][:200]
    assert second["raw"] == 0, "a Markdown cell still shows raw $$ TeX"
    assert not outside, f"requests left the machine: {outside[:5]}"
    # RISE also asks for an optional per-lesson stylesheet, NN_name.css; only
    # notebooks/rise.css exists, shared by all lessons.
    optional = f"/files/{Path(notebook).stem}.css "
    failed = [request for request in failed_requests if optional not in request]
    assert not failed, f"failed requests: {failed[:5]}"
    print(f"[browser] RISE advanced to {second['text'].splitlines()[0]!r}, total "
          f"{time.monotonic() - started:.1f} s")
