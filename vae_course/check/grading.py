"""Marks from a checker, so that a grade and the hint a learner reads agree.

``score`` runs one of the checkers on a learner's function, prints its report as
usual and returns ``points`` times the share of its checks that passed: full marks
only when the checker passes, none when the function is missing or crashes at once.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable

from ._report import recorded

# The share of the points a failing checker can earn at most, so that any failed
# check costs marks however many checks passed.
BELOW_FULL = 0.95


def score(checker: Callable, fn, *args, points: float = 1.0, **options) -> float:
    """``checker(fn, *args, **options)`` in marks, out of ``points``.

    A ``fn`` that is no function (the answer cell did not define it) scores 0 with
    a message instead of raising. Warnings that ``fn`` raises are printed with the
    report, on standard output.
    """
    if not callable(checker) or not getattr(checker, "__module__", "").startswith(
            __package__):
        raise TypeError(f"checker must be one of vc.check's checkers, such as "
                        f"vc.check.negative_elbo; got {checker!r}")
    if isinstance(points, bool) or not isinstance(points, int | float) or not (
            math.isfinite(points) and points > 0):
        raise ValueError(f"points must be a positive number; got {points!r}")
    if not callable(fn):
        print(f"✗ expected your function, got {type(fn).__name__}: define it in the "
              "answer cell above and run that cell first.")
        return 0.0
    with recorded() as reports, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        passed = checker(fn, *args, **options)
    for warning in caught:
        print(f"warning: {warning.category.__name__}: {warning.message}",
              file=sys.stdout)
    checks = sum(report.checks for report in reports)
    failures = sum(report.failures for report in reports)
    if passed is True:
        share = 1.0
    else:
        share = min(BELOW_FULL, (checks - failures) / checks) if checks else 0.0
    marks = round(points * share, 2)
    print(f"Marks: {marks:g} of {points:g}")
    return marks
