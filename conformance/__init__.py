"""The clause tests of POLICY_ONNX_SPEC; installed as `policy_onnx.conformance`, so that
`pytest --pyargs policy_onnx.conformance --model m.zip` runs them from any repository."""
