"""End-to-end tests: run lessons in a real JupyterLab, driven by headless Chromium.

They check what a learner sees, which the nbval tests cannot: the notebook opens in
JupyterLab, Run All Cells finishes without an error, the figures render, and the
latent explorer of lesson 05 redraws its digit when a slider moves. Under RISE (live
slides) they check what a class sees on a projector of 1280x720: the text sizes, that
every slide fits or scrolls, that the explorer works there too, and that presenting a
lesson leaves it as committed.

Run them alone with ``pytest -m browser``; ``make test`` runs them with the rest.
They need Debian's Chromium (``apt-get install chromium``) and Playwright's Python
package; they never download a browser. ``VAE_COURSE_CHROMIUM`` points them at
another Chromium binary. A missing browser skips them with the reason.

The server works on a copy of ``notebooks/`` with the outputs stripped, so every
figure and execution count the test sees comes from this run, the committed
notebooks are never touched, and JupyterLab's settings, workspaces, runtime files
and the kernel's IPython profile live under pytest's temporary folder, not in $HOME.
The slideshows are presented from a second copy, ``presented/`` in the server's root,
which keeps the committed outputs and is a git repository of its own, so that
``git status`` there tells what presenting wrote.
"""

from __future__ import annotations

import io
import json
import math
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


def makefile_lab_options() -> dict[str, str]:
    """The ``--LabApp.*`` and ``--RiseApp.*`` options that ``make lab`` hands JupyterLab,
    by name (``LabApp.app_settings_dir``, ...)."""
    recipe = subprocess.run(["make", "-n", "-o", ".venv/.installed-stamp", "lab"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"--((?:LabApp|RiseApp)\.\w+)=(\S+)", recipe))


def makefile_lab_settings() -> str:
    """The settings folder that ``make lab`` hands JupyterLab (None if it hands none)."""
    return makefile_lab_options().get("LabApp.app_settings_dir")


LAB_OPTIONS = makefile_lab_options()
LAB_SETTINGS = LAB_OPTIONS.get("LabApp.app_settings_dir", "jupyter-settings")
# The extensions folder make lab adds, for JupyterLab and for RISE's own page.
LAB_EXTENSIONS = {name: value for name, value in LAB_OPTIONS.items()
                  if name.endswith(".extra_labextensions_path")}
# The committed lessons, as the slideshow tests present them (see the module's notes).
PRESENTED = "presented"
SERVER_START_S = 60
PAGE_LOAD_S = 90
RUN_ALL_S = 240
# What lesson 05's latent explorer needs run before it, by a piece of each cell's code.
EXPLORER_NEEDS = ("vc.setup(", 'load_mnist("train")', "def train_latent2",
                  'load_or_train("mnist_latent2"', "latent_explorer(")
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


def git(folder: Path, *args: str) -> str:
    """Run git in ``folder`` with an identity of its own; returns its output."""
    command = ["git", "-c", "user.name=vae-course tests",
               "-c", "user.email=tests@vae-course.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(command + list(args), cwd=folder, capture_output=True,
                          text=True, check=True).stdout


def committed_copy(source: Path, folder: Path) -> None:
    """Copy ``source`` into ``folder`` unchanged and commit it there, with the
    repository's .gitignore, when git is installed (CI has it: it cloned the repo)."""
    shutil.copytree(source, folder)
    if shutil.which("git"):
        shutil.copy(REPO / ".gitignore", folder / ".gitignore")
        git(folder, "init", "-q")
        git(folder, "add", "-A")
        git(folder, "commit", "-q", "--no-verify", "-m", "the lessons as committed")


def as_committed(folder: Path) -> Path:
    """Put a :func:`committed_copy` back as committed (a test before may have changed
    it); returns the folder."""
    if (folder / ".git").is_dir():
        git(folder, "checkout", "-q", "--", ".")
        git(folder, "clean", "-fdq")
    return folder


def changed_files(folder: Path) -> list[str]:
    """``git status --porcelain`` in a :func:`committed_copy`."""
    if not (folder / ".git").is_dir():
        pytest.skip("git is not installed: apt-get install git")
    return git(folder, "status", "--porcelain").splitlines()


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
    committed_copy(source, root / PRESENTED)
    state = workdir / "jupyter-state"
    # The lessons' models, ready as a learner who ran lessons 04 and 05 has them: the
    # committed ones, in a runs/ of the lab's own, so that no test waits on training
    # and none depends on what another test left in the repository's runs/.
    runs = workdir / "runs"
    (runs / "smoke").mkdir(parents=True)
    for model in (REPO / "checkpoints").glob("*.pt"):
        shutil.copy(model, runs / "smoke" / model.name)
    env = dict(os.environ)
    env.update({
        "VAE_COURSE_SMOKE": "1",
        "VAE_COURSE_RUNS": str(runs),
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
        # The extensions folder make lab adds (ipywidgets in RISE's page).
        *(f"--{name}={REPO / value}" for name, value in LAB_EXTENSIONS.items()),
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


# A classroom projector: RISE lays its slides out at the screen's size.
PROJECTOR = {"width": 1280, "height": 720}


@contextmanager
def browser(lab: LabServer, tmp_path: Path, viewport: dict):
    """A headless Chromium context; its kernels are shut down afterwards."""
    sync_api = chromium_or_skip()
    with sync_api.sync_playwright() as playwright:
        context = launch(playwright, tmp_path, viewport)
        if not context.pages:
            context.new_page()
        try:
            yield context
        finally:
            context.close()
            close_sessions(lab)


@pytest.fixture
def page(lab, tmp_path):
    with browser(lab, tmp_path, {"width": 1400, "height": 1000}) as context:
        yield context.pages[0]


@pytest.fixture
def projector(lab, tmp_path):
    """A browser the size of a projector, with every request off this machine cut off
    (a classroom without internet); yields the context, its list of requests that
    left and its list of failed requests."""
    with browser(lab, tmp_path, PROJECTOR) as context:
        outside, failed = block_network(context, context)
        yield context, outside, failed


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
        named = session.get("path") == notebook or session.get("name") in (
            notebook, Path(notebook).name)
        if named and session.get("kernel"):
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


def open_notebook(page, lab: LabServer, notebook: str, pause=time.sleep) -> None:
    """Open ``notebook`` in JupyterLab and wait for its kernel (``pause``: see
    :func:`wait_until`)."""
    page.goto(lab.page_url(notebook), wait_until="domcontentloaded",
              timeout=PAGE_LOAD_S * 1000)
    page.locator(f"{PANEL} .jp-Cell").first.wait_for(timeout=PAGE_LOAD_S * 1000)
    # A notebook without kernel metadata asks which kernel to start.
    select_kernel = page.locator(".jp-Dialog .jp-mod-accept")
    if select_kernel.count():
        select_kernel.first.click()
    wait_until(lambda: kernel_state(lab, notebook) == "idle", PAGE_LOAD_S,
               "the kernel to start and go idle", pause=pause)
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


def integral_floats(text: str) -> list[str]:
    """The numbers of a JSON text written with a fraction that is zero, like 3.0."""
    found = []

    def number(literal: str) -> float:
        value = float(literal)
        if math.isfinite(value) and value.is_integer():
            found.append(literal)
        return value

    json.loads(text, parse_float=number)
    return found


def test_a_save_in_jupyterlab_leaves_every_notebook_as_committed():
    """RISE's Alt+R saves the notebook before it shows the slides. JupyterLab then
    writes the model it holds: the spec of the kernel it started, and numbers as
    JavaScript writes them (3 for 3.0, as in stored widget state); the server lays
    the file out as nbformat does. Each committed notebook must already read so."""
    nbformat = pytest.importorskip("nbformat")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    spec = kernelspec.KernelSpecManager().get_kernel_spec("python3")
    expected = {"display_name": spec.display_name, "language": spec.language,
                "name": "python3"}
    problems = []
    for path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        name, text = path.relative_to(REPO), path.read_text("utf-8")
        metadata = json.loads(text)["metadata"]
        integral = integral_floats(text)
        if metadata.get("kernelspec") != expected:
            problems.append(f"{name}: kernelspec {metadata.get('kernelspec')}, but "
                            f"JupyterLab writes {expected}")
        if integral:
            where = " (stored widget state)" if "widgets" in metadata else ""
            problems.append(f"{name}: {len(integral)} numbers such as {integral[0]} "
                            f"that JupyterLab writes otherwise{where}")
        layout = io.StringIO()
        nbformat.write(nbformat.reads(text, as_version=nbformat.NO_CONVERT), layout)
        if layout.getvalue() != text:
            problems.append(f"{name}: not laid out as nbformat writes it")
    assert not problems, "a save would change these notebooks:\n" + "\n".join(problems)


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


# ------------------------------------------------------------------- slideshows (RISE)

RISE_STATE_JS = """() => {
    const reveal = document.querySelector('.reveal');
    const current = reveal?.querySelector('.slides section.present:not(.stack)')
        ?? reveal?.querySelector('.slides section.present');
    return {
        reveal: !!reveal,
        total: reveal ? reveal.querySelectorAll('.slides section').length : 0,
        slide: current ? current.id : null,
        text: current ? current.innerText : '',
        maths: reveal ? reveal.querySelectorAll('mjx-container, .MathJax').length : 0,
        raw: reveal ? [...reveal.querySelectorAll('.jp-RenderedMarkdown')]
            .map(node => node.innerText).filter(text => text.includes('$$')).length : 0,
    };
}"""

# The font sizes in pixels of every paragraph, code cell and printed output.
TEXT_SIZES_JS = """() => {
    const reveal = document.querySelector('.reveal');
    const sizes = selector => [...reveal.querySelectorAll(selector)]
        .map(node => parseFloat(getComputedStyle(node).fontSize));
    return {
        prose: sizes('.jp-RenderedMarkdown p, .jp-RenderedMarkdown li'),
        code: sizes('.jp-CodeCell .cm-content'),
        outputs: sizes(['application/vnd.jupyter.stdout', 'text/plain']
            .map(type => `.jp-OutputArea-output[data-mime-type="${type}"] pre`)
            .join(', ')),
    };
}"""

# Where the slide ``id`` sits on the screen once it is shown; until then null, and
# the address asks for it again (RISE may move the deck on its own a moment after a
# slide changes: it selects the slide's code cell and shows the slide of that cell).
SLIDE_FIT_JS = """(id) => {
    const slide = document.getElementById(id);
    if (!slide.classList.contains('present')) {
        if (!location.hash.startsWith('#/' + id)) location.hash = '#/' + id;
        return null;
    }
    const box = slide.getBoundingClientRect();
    const name = node => [node.tagName.toLowerCase(), ...node.classList].join('.');
    const outside = [...slide.querySelectorAll(
        '.jp-RenderedMarkdown > *, .jp-InputArea, .jp-OutputArea-output, img')]
        .filter(node => {
            const b = node.getBoundingClientRect();
            return b.width && (b.left < -1 || b.right > innerWidth + 1);
        }).map(name);
    const hidden = [...slide.querySelectorAll('.cm-scroller, .jp-OutputArea-output pre')]
        .filter(node => node.scrollWidth > node.clientWidth + 1).map(name);
    return {
        top: box.top, bottom: box.bottom, height: innerHeight,
        tall: slide.scrollHeight > slide.clientHeight + 1,
        scrolls: ['auto', 'scroll'].includes(getComputedStyle(slide).overflowY),
        outside: outside, hidden: hidden,
        title: slide.innerText.trim().split('\\n')[0].slice(0, 60),
    };
}"""

# Records every text the prompt of cell ``index`` shows, to tell when it has run.
WATCH_PROMPT_JS = """(index) => {
    const prompt = document.querySelectorAll('.reveal .jp-Cell')[index]
        .querySelector('.jp-InputArea-prompt');
    const seen = [prompt.textContent.trim()];
    (window.vaeCoursePrompts = window.vaeCoursePrompts || {})[index] = seen;
    new MutationObserver(() => seen.push(prompt.textContent.trim()))
        .observe(prompt, {childList: true, characterData: true, subtree: true});
}"""

# The execution count of cell ``index`` once it has run since it was watched.
RAN_JS = """(index) => {
    const cell = document.querySelectorAll('.reveal .jp-Cell')[index];
    const now = cell.querySelector('.jp-InputArea-prompt').textContent.trim();
    const seen = window.vaeCoursePrompts[index];
    return seen.includes('[*]:') && /^\\[\\d+\\]:$/.test(now) ? now : null;
}"""

# Index among the slideshow's cells of the first code cell whose code has ``text``.
FIND_CELL_JS = """(text) => [...document.querySelectorAll('.reveal .jp-Cell')].findIndex(
    cell => cell.classList.contains('jp-CodeCell')
        && cell.querySelector('.cm-content').textContent.includes(text))"""


def rise_url(lab: LabServer, notebook: str) -> str:
    return f"{lab.url}/rise/{notebook}?token={lab.token}"


def wait_for_slides(target, pause) -> dict:
    """Wait until RISE (in a page or a frame) shows its slides with the maths typeset."""
    target.locator(".reveal .slides section").first.wait_for(timeout=PAGE_LOAD_S * 1000)
    state = wait_until(lambda: (s := target.evaluate(RISE_STATE_JS))["maths"] and s,
                       60, "RISE to typeset the maths of the title slide", pause=pause)
    assert state["raw"] == 0, "a Markdown cell still shows raw $$ TeX"
    return state


def show_slide(target, slide: str, pause) -> dict:
    """Go to the slide with id ``slide`` (RISE numbers them slide-H-V) and measure it."""
    return wait_until(lambda: target.evaluate(SLIDE_FIT_JS, slide), 10,
                      f"slide {slide} to show", interval=0.05, pause=pause)


def show_cell(target, index: int, pause) -> None:
    """Go to the slide that holds cell ``index``."""
    slide = target.evaluate("(i) => document.querySelectorAll('.reveal .jp-Cell')[i]"
                            ".closest('section').id", index)
    show_slide(target, slide, pause)


def run_cell(page, target, index: int, pause, timeout: float) -> str:
    """Run cell ``index`` as a presenter does, with Shift+Enter (RISE runs the cell
    and moves on); returns its prompt once it has run."""
    show_cell(target, index, pause)
    target.evaluate(WATCH_PROMPT_JS, index)
    target.locator(".reveal .jp-Cell").nth(index).locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    stderr = ('.reveal .jp-OutputArea-output'
              '[data-mime-type="application/vnd.jupyter.stderr"]')
    try:
        return wait_until(lambda: target.evaluate(RAN_JS, index), timeout,
                          f"cell {index} to run in the slideshow", pause=pause)
    finally:
        errors = [text for text in target.locator(stderr).all_inner_texts()
                  if ERROR_TEXT.search(text)]
        assert not errors, f"a cell failed in the slideshow:\n{errors[0][-2000:]}"


def check_text_sizes(target, notebook: str) -> dict:
    """Prose, code and outputs in proportion, and code readable on the projector."""
    sizes = target.evaluate(TEXT_SIZES_JS)
    assert all(sizes.values()), f"{notebook}: no prose, code or outputs to measure"
    code = sorted(set(sizes["code"]))
    assert len(code) == 1, f"{notebook}: code cells in several sizes, {code} px"
    code = code[0]
    assert code >= 16, f"{notebook}: code at {code} px is too small on a projector"
    wrong = sorted({size for size in sizes["outputs"] if not 0.8 <= size / code <= 1.25})
    assert not wrong, f"{notebook}: outputs at {wrong} px beside code at {code} px"
    small = sorted({size for size in sizes["prose"] if not code <= size <= 1.6 * code})
    assert not small, f"{notebook}: prose at {small} px beside code at {code} px"
    found = {kind: sorted(set(values)) for kind, values in sizes.items()}
    print(f"[browser] {notebook}: font sizes in px {found}")
    return found


def check_slides_fit(target, notebook: str, pause) -> None:
    """Every slide either fits the screen or scrolls, and none is cut at the sides."""
    slides = target.evaluate("() => [...document.querySelectorAll("
                             "'.reveal .slides > section > section')].map(s => s.id)")
    problems, scrolling = [], 0
    for slide in slides:
        fit = show_slide(target, slide, pause)
        where = f"{slide} ({fit['title']!r})"
        if fit["top"] < -1 or fit["bottom"] > fit["height"] + 1:
            problems.append(f"{where} runs off the screen: {fit['top']:.0f} to "
                            f"{fit['bottom']:.0f} px of {fit['height']}")
        if fit["tall"] and not fit["scrolls"]:
            problems.append(f"{where} is taller than the screen and does not scroll")
        scrolling += fit["tall"]
        problems += [f"{where}: {node} is cut at the side" for node in fit["outside"]]
        problems += [f"{where}: {node} hides the end of its lines"
                     for node in fit["hidden"]]
    assert not problems, f"{notebook}:\n" + "\n".join(problems)
    print(f"[browser] {notebook}: {len(slides)} slides fit the screen, {scrolling} of "
          "them by scrolling")


def optional_stylesheet_failures(failed: list[str], notebook: str) -> list[str]:
    """The failed requests, but for RISE's optional per-lesson stylesheet NN_name.css
    (only notebooks/rise.css exists, shared by all lessons)."""
    optional = f"/files/{Path(notebook).with_suffix('.css')} "
    return [request for request in failed if optional not in request]


def check_presented(target, notebook: str, presented: Path, outside, failed, pause):
    """After presenting: text in proportion, every slide fits or scrolls, nothing left
    the machine or failed to load, and the lesson is as committed."""
    check_text_sizes(target, notebook)
    check_slides_fit(target, notebook, pause)
    assert not outside, f"requests left the machine: {outside[:5]}"
    failed = optional_stylesheet_failures(failed, notebook)
    assert not failed, f"failed requests: {failed[:5]}"
    changed = changed_files(presented)
    assert not changed, f"presenting the lesson changed it: {changed}"


@pytest.mark.timeout(300)
@lesson_missing("03_elbo.ipynb")
def test_lesson_03_presents_with_rise(lab, projector, tmp_path):
    """Present lesson 03 as a teacher does, with no internet: open it, Alt+R (RISE
    saves the notebook and shows the slideshow beside it), run the setup cell, step
    on, leave; then full screen, where every slide must be readable and fit. The
    lesson must be left exactly as committed."""
    context, outside, failed = projector
    presented = as_committed(lab.root / PRESENTED)
    notebook = f"{PRESENTED}/03_elbo.ipynb"
    page = context.pages[0]
    pause = page_pause(page)
    started = time.monotonic()
    open_notebook(page, lab, notebook, pause)
    page.locator(f"{PANEL} .jp-Notebook").click(position={"x": 5, "y": 5})
    page.keyboard.press("Alt+r")
    frame = wait_until(lambda: next((f for f in page.frames if "/rise/" in f.url), None),
                       PAGE_LOAD_S, "Alt+R to open the slideshow", pause=pause)
    first = wait_for_slides(frame, pause)
    print(f"\n[browser] RISE {notebook}: {first['total']} sections, {first['maths']} "
          f"formulas typeset after {time.monotonic() - started:.1f} s")
    assert first["text"].lstrip().startswith("03"), first["text"][:200]

    setup = frame.evaluate(FIND_CELL_JS, "vc.setup(")
    assert setup >= 0, f"{notebook} has no setup cell"
    prompt = run_cell(page, frame, setup, pause, 90)
    page.keyboard.press("Escape")
    show_slide(frame, first["slide"], pause)
    page.keyboard.press("ArrowRight")
    second = wait_until(
        lambda: (s := frame.evaluate(RISE_STATE_JS))["text"] != first["text"] and s,
        15, "the slideshow to advance", pause=pause)
    assert "derivation" in second["text"].lower(), second["text"][:200]
    print(f"[browser] setup cell ran as {prompt}, advanced to "
          f"{second['text'].splitlines()[0]!r}")
    page.close()

    slides = context.new_page()
    slides.goto(rise_url(lab, notebook), wait_until="domcontentloaded",
                timeout=PAGE_LOAD_S * 1000)
    pause = page_pause(slides)
    wait_for_slides(slides, pause)
    slides.screenshot(path=str(tmp_path / "03_rise.png"))
    check_presented(slides, notebook, presented, outside, failed, pause)
    print(f"[browser] RISE {notebook}: total {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(300)
@lesson_missing("05_visualization.ipynb")
def test_lesson_05_latent_explorer_works_under_rise(lab, projector, tmp_path):
    """The latent explorer in the slideshow: ipywidgets' extension loads in RISE's
    page, the sliders show and a drag redraws the digit (in the slideshow the arrow
    keys change slides). The slides, grown by the run, must still fit."""
    context, outside, failed = projector
    presented = as_committed(lab.root / PRESENTED)
    notebook = f"{PRESENTED}/05_visualization.ipynb"
    page = context.pages[0]
    pause = page_pause(page)
    started = time.monotonic()
    page.goto(rise_url(lab, notebook), wait_until="domcontentloaded",
              timeout=PAGE_LOAD_S * 1000)
    wait_for_slides(page, pause)
    wait_until(lambda: kernel_state(lab, notebook) == "idle", PAGE_LOAD_S,
               "the slideshow's kernel to start and go idle", pause=pause)
    # The cells the explorer needs, each run as a presenter does, one Shift+Enter
    # each: the setup, the data, the 2-D model and the explorer itself.
    needed = [page.evaluate(FIND_CELL_JS, code) for code in EXPLORER_NEEDS]
    assert all(index >= 0 for index in needed) and needed == sorted(needed), (
        f"{notebook}: cells {dict(zip(EXPLORER_NEEDS, needed, strict=True))}")
    for index in needed:
        prompt = run_cell(page, page, index, pause, RUN_ALL_S)
    print(f"\n[browser] RISE {notebook}: ran the cells the explorer needs ({prompt}) "
          f"after {time.monotonic() - started:.1f} s")

    show_cell(page, needed[-1], pause)
    image = page.locator(f".reveal img.{EXPLORER_CLASS_IMAGE}").first
    slider = page.locator(f".reveal .{EXPLORER_CLASS_SLIDER}").first
    slider.wait_for(timeout=30_000)
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    before_src = image.get_attribute("src")
    before_value = slider.locator(".widget-readout").first.text_content()
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 80, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    wait_until(lambda: image.get_attribute("src") != before_src, 30,
               "the explorer image to change after dragging the slider", pause=pause)
    after_value = slider.locator(".widget-readout").first.text_content()
    page.screenshot(path=str(tmp_path / "05_rise_explorer.png"))
    print(f"[browser] slider {before_value!r} -> {after_value!r}")
    assert after_value != before_value, "the slider's readout did not move"

    check_presented(page, notebook, presented, outside, failed, pause)
    print(f"[browser] RISE {notebook}: total {time.monotonic() - started:.1f} s")
