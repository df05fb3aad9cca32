"""Export of the neural engine: ``python -m export --checkpoint CKPT --out DIR``.

Writes ``embedder.onnx`` (K photos + landmark images -> ê and the AdaIN parameters ψ = P·ê,
computed once per avatar), ``generator.onnx`` (landmark image + AdaIN parameters -> face), a
``model.json`` the runtime checks, and, where TensorRT is installed, an fp16 TensorRT engine.
"""
from export.onnx_export import MODEL_FORMAT, ExportError, export_model

__all__ = ["MODEL_FORMAT", "ExportError", "export_model"]
