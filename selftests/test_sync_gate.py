"""The sync gate: the registry, the spec document and the clause tests agree. Fails, never warns."""

from __future__ import annotations

import dataclasses

from policy_onnx import spec, spec_doc

from .conftest import CONFORMANCE, REAL_ONNX


def gate_problems(items, clauses) -> list[str]:
    """Clauses with no test, tests citing no clause or an unknown one, ids that do not read as
    the clause, and model-dependent clauses whose tests do not take the model (or vice versa)."""
    by_id = {c.id: c for c in clauses}
    tested: set[str] = set()
    problems = []
    for item in items:
        markers = [m.args[0] for m in item.iter_markers("clause")]
        if len(markers) != 1:
            problems.append(f"{item.nodeid}: cites {len(markers)} clauses, must cite one")
            continue
        clause = by_id.get(markers[0])
        if clause is None:
            problems.append(f"{item.nodeid}: cites unknown clause {markers[0]}")
            continue
        tested.add(clause.id)
        if not item.nodeid.endswith(f"[{clause.test_id}]"):
            problems.append(f"{item.nodeid}: id does not end with [{clause.test_id}]")
        if clause.needs_model != ("reference" in item.fixturenames):
            problems.append(f"{item.nodeid}: needs_model={clause.needs_model} but the test "
                            f"{'does not take' if clause.needs_model else 'takes'} the model")
    problems += [f"{cid}: no test checks this clause" for cid in by_id if cid not in tested]
    return problems


def test_registry_is_well_formed():
    assert spec.registry_problems() == []


def test_spec_document_matches_registry():
    assert spec_doc.problems() == []


def test_every_clause_has_a_test_and_every_test_a_clause(pytester):
    items, _ = pytester.inline_genitems(str(CONFORMANCE), "--onnx", str(REAL_ONNX))
    assert len(items) >= len(spec.CLAUSES)
    assert gate_problems(items, spec.CLAUSES) == []


def test_gate_fails_on_an_untested_or_unknown_clause(pytester):
    items, _ = pytester.inline_genitems(str(CONFORMANCE), "--onnx", str(REAL_ONNX))
    untested = spec.Clause("GRAPH-99", "new_clause", spec.Level.BASIC, "A new clause",
                           "It MUST hold.")
    assert gate_problems(items, (*spec.CLAUSES, untested)) == [
        "GRAPH-99: no test checks this clause"]
    without_par01 = [c for c in spec.CLAUSES if c.id != "PAR-01"]
    assert any("cites unknown clause PAR-01" in p for p in gate_problems(items, without_par01))
    flipped = [dataclasses.replace(c, needs_model=not c.needs_model) if c.id == "BEH-01" else c
               for c in spec.CLAUSES]
    assert any("BEH-01" in p and "needs_model=True" in p for p in gate_problems(items, flipped))


def test_gate_fails_on_duplicate_ids_and_a_stale_document(monkeypatch):
    duplicate = (*spec.CLAUSES, spec.CLAUSES[0])
    monkeypatch.setattr(spec, "CLAUSES", duplicate)
    assert "GRAPH-01: ID used 2 times" in spec.registry_problems()
    assert any("differ from policy_onnx/spec.py" in p for p in spec_doc.problems())


def test_the_published_metadata_schema_is_the_one_applied(tmp_path):
    """POLICY_ONNX_METADATA.schema.json is a valid JSON Schema, names the nine keys, and the
    suite's own exports (a vector and a goal-dict policy) satisfy it, contents included."""
    import json

    import jsonschema

    from policy_onnx import metadata
    from policy_onnx.artifact import Artifact
    from policy_onnx.export import export
    from policy_onnx.load import load_model

    from .conftest import REAL_MODEL, ROOT, ZOO

    schema = json.loads((ROOT / "POLICY_ONNX_METADATA.schema.json").read_text())
    assert metadata.SCHEMA_PATH.read_text() == (ROOT / "POLICY_ONNX_METADATA.schema.json").read_text()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert tuple(schema["required"]) == metadata.KEYS
    for model in (REAL_MODEL, ZOO / "tqc" / "FetchReach-v1_1" / "FetchReach-v1.zip"):
        entries = {k: v[0] for k, v in
                   Artifact(export(load_model(model), tmp_path / "m.onnx")).metadata.items()}
        jsonschema.validate(entries, schema)
        for key, rule in schema["properties"].items():
            if "contentSchema" in rule and key in entries:
                content = {"$defs": schema["$defs"], **rule["contentSchema"]}
                jsonschema.validate(json.loads(entries[key]), content)
    assert metadata.OBSERVATION_KEY in entries
