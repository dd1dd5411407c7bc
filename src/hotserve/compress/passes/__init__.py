"""Compression passes. Each takes a version directory holding model.onnx and writes a variant
directory holding its own model.onnx; it returns the settings it used (recorded in lineage)."""
