"""Moved to :mod:`serve_app.models.onnx_runtime` (every family's ONNX export and runtime); kept so old imports keep
working."""

from serve_app.models.onnx_runtime import (ONNX_DTYPES, OnnxTowers, cache_dir, cache_key, export_summary,  # noqa: F401
                                           export_towers, load_onnx)

load_onnx_clip = load_onnx
