"""Sphinx settings of ``make book``: the course as a website, from the committed,
executed notebooks (nothing is run), readable with no network.

``make book`` copies this folder and ``notebooks/`` into ``build/book-src/`` and
builds ``build/book/``. MathJax 2.7 comes from the jupyter-server-mathjax package
and is copied into the site, so formulas render offline.
"""

import importlib.util
from pathlib import Path

project = "vae-course"
author = "the vae-course authors"
copyright = "the vae-course authors"

extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

# The committed notebooks carry their outputs; the website shows them as they are.
nb_execution_mode = "off"
# myst-nb would load require.js and the widget manager from a CDN for lesson 05's
# sliders, which need a running kernel anyway.
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath"]
# Notebook Markdown headings are sections of one page; #1 ... are not references.
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]

_mathjax = Path(importlib.util.find_spec("jupyter_server_mathjax")
                .submodule_search_locations[0]) / "static"
html_static_path = [str(_mathjax)]
mathjax_path = "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
mathjax2_config = {
    "tex2jax": {
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processRefs": False,
        "processEnvironments": False,
        # myst-nb marks each page mathjax_ignore and each formula class "math".
        "processClass": "math|output_area",
        "ignoreClass": "tex2jax_ignore|mathjax_ignore|document",
    },
    # The packaged MathJax carries only the STIX web fonts: ask for no other.
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web",
                 "imageFont": None},
    "fast-preview": {"disabled": True},
    "menuSettings": {"assistiveMML": False},
    "AssistiveMML": {"disabled": True},
    "messageStyle": "none",
}

html_theme = "sphinx_book_theme"
html_title = "Variational Autoencoders in PyTorch"
html_theme_options = {
    "use_download_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": True,
}
html_last_updated_fmt = None
