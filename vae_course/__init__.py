"""Helpers for the vae-course lessons: data, distributions, models, ELBO, training.

Modules import one way only::

    inputs -> runtime -> data -> distributions -> models -> elbo -> train
           -> evaluate, gaps, checkpoints, plots -> check -> cli

``inputs`` checks every argument the package is given; ``check`` gives learners
instant feedback on the functions they write in exercises. Each module is imported
the first time a lesson uses it (``vc.data.load_mnist`` imports ``vae_course.data``),
so that ``import vae_course`` costs little more than ``import torch``.
"""

import importlib

from .runtime import budget, setup, smoke_test

MODULES = ("check", "checkpoints", "data", "distributions", "elbo", "evaluate",
           "gaps", "inputs", "models", "plots", "runtime", "train")

__all__ = ["budget", "setup", "smoke_test", *MODULES]


def __getattr__(name):
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(MODULES))
