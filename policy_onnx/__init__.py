"""Conformance suite for Stable-Baselines3 policies exported to ONNX (POLICY_ONNX_SPEC 1.x)."""

__version__ = "0.1.0"
