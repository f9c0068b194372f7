"""GRAPH clauses: the artifact's file, tensor names, dtypes and shapes."""

import onnx

from policy_onnx.check import clause_test, fail, require, running


@clause_test("GRAPH-01")
def test_onnx_checker(clause, artifact):
    if artifact.external_tensors:
        name, location = artifact.external_tensors[0]
        fail(clause, f"{len(artifact.external_tensors)} initializer(s) keep their data outside "
                     f"the file (e.g. {name!r} in {location!r}): the artifact must be one "
                     "self-contained file, which runtimes load from bytes and whose SHA-256 "
                     "covers all of it. Save it with onnx.save(model, path) and no external data")
    try:
        onnx.checker.check_model(str(artifact.path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        fail(clause, f"onnx.checker.check_model(full_check=True) rejects it: {exc}")


@clause_test("GRAPH-02")
def test_runtime_loads(clause, artifact):
    with running(clause):
        assert artifact.session is not None


@clause_test("GRAPH-03")
def test_input_name(clause, artifact):
    names = [t.name for t in artifact.inputs]
    if names != ["obs"]:
        fail(clause, f"required inputs are {names}, but must be exactly ['obs']")


@clause_test("GRAPH-04")
def test_output_name(clause, artifact):
    names = [t.name for t in artifact.outputs]
    if names != ["action"]:
        fail(clause, f"outputs are {names}, but must be exactly ['action']")


@clause_test("GRAPH-05", "GRAPH-06")
def test_dtype(clause, artifact):
    tensor, name = (artifact.obs, "obs") if clause.id == "GRAPH-05" else (artifact.action, "action")
    if tensor is None:
        fail(clause, f"there is no tensor {name!r} (see the name clauses)")
    if tensor.type_name != "FLOAT":
        fail(clause, f"{tensor.name} is {tensor.type_name}, but must be FLOAT (float32)")


def _shape_problems(tensor, name):
    if tensor is None:
        return [f"there is no tensor {name!r} (see the name clauses)"]
    if len(tensor.dims) != 2:
        return [f"{tensor.name} has rank {len(tensor.dims)} (dims {list(tensor.dims)}), must be 2"]
    if not (isinstance(tensor.dims[1], int) and tensor.dims[1] > 0):
        return [f"{tensor.name} dimension 1 is {tensor.dims[1]!r}, must be a static positive size"]
    return []


@clause_test("GRAPH-07")
def test_input_shape(clause, artifact):
    require(clause, _shape_problems(artifact.obs, "obs"))


@clause_test("GRAPH-08")
def test_output_shape(clause, artifact):
    require(clause, _shape_problems(artifact.action, "action"))


@clause_test("GRAPH-09", "GRAPH-10")
def test_batch_dimension_symbolic(clause, artifact):
    tensor = artifact.obs if clause.id == "GRAPH-09" else artifact.action
    if tensor is None or not tensor.dims:
        fail(clause, "the tensor is missing or has no shape (see the name and shape clauses)")
    batch = tensor.dims[0]
    if not isinstance(batch, str):
        fail(clause, f"{tensor.name} dimension 0 is {batch!r}, must be symbolic (e.g. 'batch'); "
                     "export with a dynamic batch dimension")


@clause_test("GRAPH-11")
def test_obs_dim_matches_model(clause, artifact, reference):
    if artifact.obs_dim != reference.obs_dim:
        fail(clause, f"obs_dim is {artifact.obs_dim}, but the model's observation space "
                     f"{reference.observation_space} has {reference.obs_dim} elements")


@clause_test("GRAPH-12")
def test_act_dim_matches_model(clause, artifact, reference):
    if artifact.act_dim != reference.act_dim:
        fail(clause, f"act_dim is {artifact.act_dim}, but the model's action space "
                     f"{reference.action_space} has {reference.act_dim} elements")
