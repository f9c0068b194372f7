"""The reference exporter: a loaded SB3 model -> a POLICY_ONNX_SPEC artifact.

torch's default (dynamo) exporter, a symbolic batch dimension, the nine metadata entries (and
`observation_space` for image and dict observations).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import onnx
import torch

from . import metadata
from .heads import head_for
from .load import LoadedModel


def export(loaded: LoadedModel, output: str | Path, *, transform: str = "none") -> Path:
    """Write the artifact for `loaded` to `output` (written atomically) and return its path."""
    output = Path(output)
    head = head_for(loaded, transform)
    scale, offset = head.scale_offset()
    batch = torch.export.Dim("batch")
    # name -> (example, dynamic dimensions)
    layout = loaded.layout
    inputs = {"obs": (torch.zeros(2, layout.flatdim), {0: batch})}
    outputs = ["action"]
    if head.structure == "masked":
        inputs["action_masks"] = (torch.ones(2, head.mask_width, dtype=torch.bool), {0: batch})
    if head.structure == "recurrent":
        layers, hidden = head.state_shape
        inputs["state_h"] = (torch.zeros(layers, 2, hidden), {1: batch})
        inputs["state_c"] = (torch.zeros(layers, 2, hidden), {1: batch})
        inputs["episode_start"] = (torch.zeros(2), {0: batch})
        outputs += ["next_state_h", "next_state_c"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "graph.onnx"
        with _ONE_EXPORT_AT_A_TIME, _quiet(), _operator_table_built_once(), \
                _no_cycle_collection():
            torch.onnx.export(
                head, tuple(example for example, _ in inputs.values()), str(raw), dynamo=True,
                external_data=False, input_names=list(inputs), output_names=outputs,
                dynamic_shapes=tuple(dims for _, dims in inputs.values()), verbose=False)
        proto = onnx.load(str(raw))
    entries = metadata.build(loaded.sb3.action_space, transform, scale, offset,
                             recurrent=head.structure == "recurrent",
                             observation=layout.describe() if layout.features else None)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, entries)
    proto.producer_name = "policy_onnx"
    partial = output.with_name(output.name + ".partial")
    onnx.save(proto, str(partial))
    os.replace(partial, output)
    return output


@contextlib.contextmanager
def _operator_table_built_once():
    """torch's exporter builds its table of ONNX functions for each export, parsing the source
    of about 500 of them (0.4 s an export; a zoo exports once a policy). While one of the
    suite's exports runs, the table is built once a process and each export gets a copy of it:
    operators a caller adds to its table (torch's `custom_translation_table`) stay in its copy."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
        original = ONNXRegistry.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, KeyError, AttributeError):  # another torch than the pinned one
        yield
        return

    def built_once(cls, *args, **options):
        key = (cls, args, tuple(sorted(options.items())))
        if key not in _OPERATOR_TABLES:
            _OPERATOR_TABLES[key] = build(cls, *args, **options)
        table = copy.copy(_OPERATOR_TABLES[key])
        table.functions = {op: list(entries) for op, entries in table.functions.items()}
        return table

    ONNXRegistry.from_torchlib = classmethod(built_once)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = original


_OPERATOR_TABLES: dict = {}
# torch's exporter is not made for threads, and the suite's exports swap and restore process-wide
# state (the operator table's builder, the standard output): exports from threads wait in turn.
_ONE_EXPORT_AT_A_TIME = threading.Lock()


@contextlib.contextmanager
def _no_cycle_collection():
    """The exporter makes tens of thousands of objects that refer to each other (graphs, nodes,
    fake tensors), and Python's cycle collector walks the whole heap of torch, SB3 and pytest
    again and again while it runs: a quarter of a NatureCNN's export. The collector waits until
    the export is done (the garbage is a few MiB) and then runs as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _quiet():
    """The exporter narrates every pass on stdout and warns about torchvision; keep that out of
    the suite's report."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
