"""Checkpoint files: one record per format (native npz/JSON, the Rust project's, Nielsen's), their
metadata checks, bounded reads of untrusted files, atomic writes, and ONNX export."""
