"""The files a user gives the suite (--model, --onnx, --vecnormalize): the checks every one of
them gets before it is read, with messages that name the option, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


def check_given_file(path: Path, named: str, limit: int, fix: str, error: type[Exception],
                     too_big: str = "") -> None:
    """`error` unless `path` is a non-empty file of at most `limit` bytes; `named` is how the
    messages name it (the option and the path the user gave, e.g. "--onnx a.onnx")."""
    if not path.exists():
        raise error(f"{named}: no such file; {fix}")
    if not path.is_file():
        raise error(f"{named}: is a directory, not a file; {fix}")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{named}: the file is empty; {fix}")
    if size > limit:
        raise error(f"{named}: refused: {size:,} bytes, over the suite's limit of "
                    f"{limit:,}; {too_big or fix}")
