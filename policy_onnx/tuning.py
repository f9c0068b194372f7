"""Process tuning of a conformance run: where hypothesis keeps its files, its PRNG registered
while the heap is small, no last collections at pytest's cleanup and at exit, torch's threads
waiting without spinning, the cores shared among pytest-xdist workers."""

from __future__ import annotations

import atexit
import gc
import os
from pathlib import Path


def _keep_hypothesis_storage_out_of_the_project() -> None:
    """Hypothesis caches what it reads of the loaded modules in `.hypothesis/` of the working
    folder: the user's project. Unless told otherwise, keep it in the user's cache instead."""
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(cache / "policy-onnx" / "hypothesis")


def _seed_hypothesis_while_the_heap_is_small() -> None:
    """Hypothesis registers its own PRNG at its first test, and checks the registration with a
    full gc.collect(): after torch and its exporter are loaded that takes about 0.3 s (a
    twentieth of a check). Registered here, before the models are opened, it takes
    milliseconds."""
    try:
        from hypothesis.internal.entropy import deterministic_PRNG
    except ImportError:  # another hypothesis than the pinned one: skip the shortcut
        return
    with deterministic_PRNG():
        pass


def _skip_the_last_collections_at_exit() -> None:
    """At exit the interpreter's last full collections walk the whole heap of torch, SB3 and
    the dynamo exporter (about a second, a sixth of a run) to free memory the finished process
    gives back anyway. Frozen at exit, they are skipped; atexit handlers still run and the
    standard streams are still flushed. Only at exit: a caller running pytest in-process keeps a
    collector that collects."""
    atexit.unregister(gc.freeze)  # once, however many sessions a process runs
    atexit.register(gc.freeze)


def _skip_pytests_last_collection(config) -> None:
    """At its cleanup pytest collects the whole heap once more, to report exceptions raised in
    destructors of garbage it finds (about 0.5 s after an export, a twentieth of a real agent's
    run). The collector still runs as usual during the run; only that last pass is skipped."""
    try:
        from _pytest.unraisableexception import gc_collect_iterations_key
    except ImportError:  # another pytest than the pinned one: keep its collection
        return
    config.stash[gc_collect_iterations_key] = 0


def _torch_threads_wait_passively() -> None:
    """torch's OpenMP threads spin at each barrier, waiting for each other: while another
    process takes a core (a shared CI runner), every operation waits for a thread that is not
    running. A NatureCNN's gradient step took 100-330 ms instead of 25 then; waiting passively,
    55-75 ms, and the same 25 ms on a quiet machine (a real MLP agent's run about 1% slower).
    OpenMP reads this once, when torch is first imported: a run that imports torch before the
    suite (or sets the variable) keeps its own."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _share_the_cores(busy_workers: int) -> None:
    """pytest-xdist starts a worker per core: torch and ONNX Runtime each using every core in
    every worker made a zoo slower in parallel than serially. Each worker that has a policy to
    check gets its share of the cores (all of them when there is one policy: one worker works)."""
    import torch

    from . import artifact

    threads = max(1, (os.cpu_count() or 1) // max(busy_workers, 1))
    torch.set_num_threads(threads)
    artifact.SESSION_THREADS = threads
