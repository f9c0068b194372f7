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


# What pytest raises to end a test with a verdict (fail, skip, xfail, exit); anything else that
# escapes a clause test is the suite's own defect or limitation.
VERDICTS = (pytest.fail.Exception, pytest.skip.Exception, pytest.xfail.Exception,
            pytest.exit.Exception)


def suite_limitation(clause: spec.Clause, excinfo: pytest.ExceptionInfo) -> str:
    """The verdict text of a clause the suite could not check (an exception of its own, such as
    a hypothesis health check): it says so, and where, instead of blaming the artifact."""
    exc = excinfo.value
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    frame = excinfo.traceback[-1]
    return (f"[{clause.id}] NOT CHECKED: the suite could not check this clause ({type(exc).__name__}: "
            f"{text}, at {frame.path}:{frame.lineno + 1}). This is a limitation or defect of "
            "the suite, not a verdict on the artifact; please report it with this text.")


ROW_SHOWN = 24  # elements of a row a message shows (an image's are in the counterexample file)


def row(values) -> str:
    """A row of numbers for a message: the first ROW_SHOWN, then how many more."""
    shown = ", ".join(repr(float(v)) for v in list(values)[:ROW_SHOWN])
    more = len(values) - ROW_SHOWN
    return f"[{shown}{f', ... {more:,} more' if more > 0 else ''}]"
