"""nbconvert settings of ``make slides``; tests/test_slides.py builds with them too.

The decks load reveal.js and MathJax from ``reveal.js/`` and ``mathjax/`` beside them,
which ``make slides`` copies from installed packages (sphinx-revealjs and
jupyter-server-mathjax), so a deck opens with no network.
"""

from pathlib import Path

c = get_config()  # noqa: F821 -- provided by traitlets when nbconvert loads this file

c.TemplateExporter.extra_template_basedirs = [str(Path(__file__).resolve().parent)]
c.SlidesExporter.template_name = "offline-reveal"
c.SlidesExporter.reveal_url_prefix = "reveal.js"
c.SlidesExporter.reveal_theme = "white"
c.SlidesExporter.reveal_transition = "none"
# 16:9 at the size of the classroom projector; reveal.js scales it to the screen.
c.SlidesExporter.reveal_width = "1280"
c.SlidesExporter.reveal_height = "720"
c.SlidesExporter.mathjax_url = (
    "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe")
