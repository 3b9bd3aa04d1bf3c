"""Helpers for the vae-course lessons: data, distributions, models, ELBO, training.

Modules import one way only::

    runtime -> data -> distributions -> models -> elbo -> train
            -> evaluate, gaps, checkpoints, plots -> check -> cli

``check`` gives learners instant feedback on the functions they write in exercises.
"""

from . import (
    check,
    checkpoints,
    data,
    distributions,
    elbo,
    evaluate,
    gaps,
    models,
    plots,
    runtime,
    train,
)
from .runtime import budget, setup, smoke_test

__all__ = [
    "budget", "check", "checkpoints", "data", "distributions", "elbo", "evaluate",
    "gaps", "models", "plots", "runtime", "setup", "smoke_test", "train",
]
