# The conformance suite's plugin, for `pytest conformance ...`; pytester, for the self-tests that
# run the suite in-process (pytest_plugins may only be declared in the root conftest).
pytest_plugins = ["policy_onnx.plugin", "pytester"]
