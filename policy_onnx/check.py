"""What a clause test in conformance/ is written with: the clause parametrization and verdicts."""

from __future__ import annotations

import contextlib

import pytest

from . import spec
from .artifact import ArtifactError


def clause_test(*clause_ids: str):
    """Parametrize a test over clauses of the registry; ids read as clauses (``META-04-...``)."""
    clauses = [spec.clause(cid) for cid in clause_ids]
    params = [pytest.param(c, id=c.test_id, marks=pytest.mark.clause(c.id)) for c in clauses]
    return pytest.mark.parametrize("clause", params)


def fail(clause: spec.Clause, message: str) -> None:
    """Fail the clause with a verdict, not a traceback (nor the exception that led to it)."""
    raise pytest.fail.Exception(f"[{clause.id}] {message}", pytrace=False) from None


def require(clause: spec.Clause, problems: list[str]) -> None:
    if problems:
        fail(clause, "; ".join(problems))


@contextlib.contextmanager
def running(clause: spec.Clause):
    """An artifact that cannot run fails the clause that tried to run it."""
    try:
        yield
    except ArtifactError as exc:
        fail(clause, str(exc))


ROW_SHOWN = 24  # elements of a row a message shows (an image's are in the counterexample file)


def row(values) -> str:
    """A row of numbers for a message: the first ROW_SHOWN, then how many more."""
    shown = ", ".join(repr(float(v)) for v in list(values)[:ROW_SHOWN])
    more = len(values) - ROW_SHOWN
    return f"[{shown}{f', ... {more:,} more' if more > 0 else ''}]"
