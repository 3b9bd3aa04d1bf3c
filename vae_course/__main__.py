"""Entry point of ``python -m vae_course``; see :mod:`vae_course.cli`."""

import sys

from .cli import main

sys.exit(main())
