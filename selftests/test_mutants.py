"""Every clause can fail: each mutant fails exactly the clauses it declares, and every conforming
variant passes everything."""

from __future__ import annotations

import onnx
import pytest

from policy_onnx import spec
from policy_onnx.export import export
from policy_onnx.load import load_model
from policy_onnx.normalization import attach

from .mutants import CONFORMING, MUTANTS, USAGE_ERROR, Mutant

# Clauses no artifact can violate on its own, with the reason (none so far).
UNKILLABLE: dict[str, str] = {}



@pytest.fixture(scope="session")
def base_exports(fixture_models, tmp_path_factory):
    """Exports of the fixture models (with the statistics found beside them), made once:
    conforming ones by (model, transform), those of a mutant's `prepare` by its name."""
    out = tmp_path_factory.mktemp("base-exports")
    cache = {}

    def get(mutant: Mutant) -> bytes:
        key = mutant.name if mutant.prepare else (mutant.model, mutant.transform)
        if key not in cache:
            loaded = load_model(fixture_models[mutant.model])
            attach(loaded, None)
            if mutant.prepare:
                mutant.prepare(loaded)
            path = export(loaded, out / f"{mutant.name}-base.onnx", transform=mutant.transform)
            cache[key] = path.read_bytes()
        return cache[key]

    return get


def materialize(mutant: Mutant, base_exports, directory) -> str:
    result = mutant.mutate(onnx.load_from_string(base_exports(mutant)))
    path = directory / f"{mutant.name}.onnx"
    if mutant.external_data:
        onnx.save(result, str(path), save_as_external_data=True, location="weights.bin",
                  size_threshold=256)
    else:
        path.write_bytes(result if isinstance(result, bytes) else result.SerializeToString())
    return str(path)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_fails_exactly_its_clauses(conformance, fixture_models, base_exports, tmp_path,
                                          record_property, mutant):
    run = conformance.run("--model", str(fixture_models[mutant.model]),
                          "--onnx", materialize(mutant, base_exports, tmp_path),
                          *(["--runtime", "tract,openvino"] if mutant.runtimes else []),
                          profile="mutation")
    if mutant.kills == USAGE_ERROR:  # for the mutation report (conftest.py)
        record_property("mutant", (mutant.name, None if run.ret == 4 else sorted(run.verdicts)))
        assert run.ret == 4 and "pass the .onnx file written by the exporter" in run.stderr, \
            run.stdout + run.stderr
        return
    failed = run.with_outcome("failed") | run.with_outcome("error")
    record_property("mutant", (mutant.name, sorted(failed)))
    # A failure reads in lines: an image's 28,224 pixels are in the counterexample file.
    longest = max((len(line) for cid in failed for line in run.messages[cid].splitlines()),
                  default=0)
    assert longest < 2000, f"a failure message has a line of {longest:,} characters"
    unexpected = {cid: run.messages.get(cid, "")[:400]
                  for cid in failed - mutant.kills - mutant.also}
    assert mutant.kills <= failed <= mutant.kills | mutant.also, (
        f"survived: {sorted(mutant.kills - failed)}; killed undeclared: {unexpected}")


@pytest.mark.parametrize("variant", CONFORMING, ids=lambda m: m.name)
def test_conforming_variant_passes(conformance, fixture_models, base_exports, tmp_path, variant):
    run = conformance.run("--model", str(fixture_models[variant.model]),
                          "--onnx", materialize(variant, base_exports, tmp_path),
                          profile="mutation")
    assert run.with_outcome("failed") | run.with_outcome("error") == set(), run.messages
    assert run.ret == 0


def test_every_clause_is_killed_by_a_declared_mutant():
    declared = set().union(*(m.kills for m in MUTANTS if m.kills != USAGE_ERROR))
    missing = [c.id for c in spec.CLAUSES if c.id not in declared and c.id not in UNKILLABLE]
    assert missing == []
    assert set(UNKILLABLE) <= {c.id for c in spec.CLAUSES}
    names = [m.name for m in (*MUTANTS, *CONFORMING)]
    assert len(names) == len(set(names))
