"""Deploying trained models: TorchScript export (:mod:`.tracing`) and a runner for the
exported file with the eager model's pre- and post-processing (:mod:`.runtime`)."""

from .runtime import ExportedModel, load_exported
from .tracing import MANIFEST, export_kind, export_torchscript, trace_model

__all__ = [
    "MANIFEST",
    "ExportedModel",
    "export_kind",
    "export_torchscript",
    "load_exported",
    "trace_model",
]
