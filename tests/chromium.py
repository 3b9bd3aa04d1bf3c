"""Headless Chromium for the browser tests, with the network cut off.

Debian's Chromium (``apt-get install chromium``) or ``$VAE_COURSE_CHROMIUM``; the
tests never download a browser. Every request that leaves this machine is aborted,
as in a classroom without internet, and recorded so that a test can fail on it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps dialling Google's hosts, which a
# closed CI network refuses; --no-sandbox because CI containers run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_executable() -> str | None:
    """The Chromium to drive: $VAE_COURSE_CHROMIUM, Debian's, or one on the PATH."""
    override = os.environ.get("VAE_COURSE_CHROMIUM", "").strip()
    if override:
        return override
    if Path(DEFAULT_CHROMIUM).exists():
        return DEFAULT_CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


# This machine: the test's own servers, files on disk, and in-page URLs.
LOCAL_URL = re.compile(
    r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/"
    r"|^(file|data|blob|about):")


def block_network(scope, page) -> tuple[list[str], list[str]]:
    """Abort every request of ``scope`` (a context or a page) that leaves this
    machine, as a classroom without internet would; returns the lists of aborted and
    of failed requests of ``page``, filled as they come.
    """
    outside: list[str] = []
    failed: list[str] = []

    def route(request_route):
        url = request_route.request.url
        if LOCAL_URL.match(url):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    scope.route("**/*", route)
    page.on("requestfailed", lambda request: failed.append(
        f"{request.url} ({request.failure})"))
    return outside, failed


def launch(playwright, profile: Path, viewport: dict):
    """A persistent headless Chromium context whose profile lives in ``profile``."""
    return playwright.chromium.launch_persistent_context(
        user_data_dir=str(profile / "chromium-profile"),
        executable_path=chromium_executable(),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=viewport,
        # Crash reports and dconf would otherwise land in the user's home.
        env={**os.environ, "XDG_CONFIG_HOME": str(profile / "xdg-config"),
             "XDG_CACHE_HOME": str(profile / "xdg-cache")},
    )


def chromium_or_skip():
    """Playwright's sync API, or skip the test with what is missing."""
    import pytest

    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright's Python package is not installed")
    executable = chromium_executable()
    if executable is None or not Path(executable).exists():
        pytest.skip("no Chromium found: apt-get install chromium, or set "
                    "VAE_COURSE_CHROMIUM to a Chromium binary")
    return sync_api


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output to what the test prints
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """``folder`` on a local HTTP server at 127.0.0.1, as a teacher serves it with
    ``python -m http.server``: yields the server's URL, and stops it after."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
