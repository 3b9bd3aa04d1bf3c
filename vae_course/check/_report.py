"""The scaffold every checker shares: the printed report, safe calls, common tests."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

PASS, FAIL = "✓", "✗"
# Stands for the result of a learner's function that raised (already reported).
CRASHED = object()
# Hints shared by several checkers.
USE_RSAMPLE = ("use rsample (or loc + scale * eps with eps = torch.randn_like(loc)), "
               "not sample: sample() draws under torch.no_grad().")
LOG_VAR_IS_ANY_REAL = ("it returned nan or inf: log_var is log sigma^2 and can be any "
                       "real number; sigma = exp(0.5 * log_var), so do not take the "
                       "log or the square root of log_var itself.")
TOO_EARLY = " One number for the whole batch is too early a reduction."
# The reports started inside each open ``recorded()`` block, innermost last.
_RECORDERS: list[list[Report]] = []


class Report:
    """Prints one line per property as it is decided and counts the failures."""

    def __init__(self, title: str):
        self.failures = self.checks = 0
        for recorder in _RECORDERS:
            recorder.append(self)
        print(title)

    def ok(self, what: str) -> bool:
        self.checks += 1
        print(f"  {PASS} {what}")
        return True

    def fail(self, what: str, hint: str) -> bool:
        self.checks += 1
        self.failures += 1
        print(f"  {FAIL} {what}")
        for line in hint.splitlines():
            print(f"      {line}")
        return False

    def check(self, what: str, passed: bool, hint: str | Callable[[], str]) -> bool:
        """``ok`` or ``fail``; a callable ``hint`` is worked out only on failure."""
        if passed:
            return self.ok(what)
        return self.fail(what, hint() if callable(hint) else hint)

    def require(self, what: str, passed: bool, hint: str | Callable[[], str]) -> bool:
        """Like ``check``, but silent when ``passed``: a precondition of later checks."""
        return passed or self.check(what, passed, hint)

    def note(self, text: str) -> None:
        """A line of information (a shape, a value), neither passed nor failed."""
        print(f"      {text}")

    def finish(self) -> bool:
        if self.failures:
            print(f"{self.failures} of {self.checks} checks failed.")
        else:
            print(f"All {self.checks} checks passed.")
        return self.failures == 0

    def call(self, fn: Callable, *args, what: str = "your function runs"):
        """``fn(*args)``, or a reported failure (and ``CRASHED``) when it raises."""
        try:
            return fn(*args)
        except Exception as error:  # a learner's bug, reported rather than raised
            self.fail(what, f"it raised {type(error).__name__}: {error}")
            return CRASHED

    def tensor(self, result, expected: str) -> bool:
        """Whether ``result`` is a tensor; reports it when it is something else."""
        if result is CRASHED:
            return False
        if isinstance(result, torch.Tensor):
            return True
        return self.fail(f"returns a tensor ({expected})",
                         f"it returned {type(result).__name__}; return a torch.Tensor "
                         "(no .item(), no NumPy) so that gradients can flow through it")

    def shaped(self, result, shape: tuple, expected: str, what: str,
               hint: Callable[[tuple], str]) -> bool:
        """Whether ``result`` is a tensor of ``shape``; ``hint(its shape)`` if not."""
        return self.tensor(result, expected) and self.check(
            what, result.shape == shape, lambda: hint(tuple(result.shape)))


@contextmanager
def recorded():
    """The list of every ``Report`` that a checker starts while the block runs."""
    reports: list[Report] = []
    _RECORDERS.append(reports)
    try:
        yield reports
    finally:
        _RECORDERS.remove(reports)


@contextmanager
def seeded():
    """Draw from a stream seeded with 0, and leave the learner's own stream as it was.

    Also a decorator: ``@seeded()`` runs a whole checker so.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def require_callable(fn) -> None:
    if not callable(fn):
        raise TypeError(f"pass your function itself (no parentheses); "
                        f"got {type(fn).__name__}")


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    a, b = a.detach().double(), b.detach().double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


def finite(values: torch.Tensor) -> bool:
    return bool(torch.isfinite(values).all())


def listed(values: torch.Tensor, digits: int = 4) -> str:
    return str([round(v, digits) for v in values.detach().double().flatten().tolist()])


def explain(slips, matches: Callable, otherwise: str | None = None) -> str | None:
    """The hint of the first ``(value, hint)`` slip whose value ``matches``."""
    return next((hint for value, hint in slips if matches(value)), otherwise)


def expected_got(result: torch.Tensor, expected: torch.Tensor, slips,
                 matches: Callable | None = None, digits: int = 4) -> str:
    """Expected and got, and the slip that ``matches`` the result, if any.

    By default a slip matches a result close to it; a slip computed per entry also
    matches a result summed over the last dimension.
    """
    def near(value):
        return close(result, value if value.shape == result.shape else value.sum(-1))

    slip = explain(slips, matches or near)
    return (f"expected {listed(expected, digits)}, got {listed(result, digits)}."
            + (f" {slip}" if slip else ""))
