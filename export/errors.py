"""Errors of the export / runtime layer, all :class:`pruneopt.errors.PruneoptError` subclasses.

The ``pruneopt`` command line prints their message as one line and exits with status 2, so every message says
what went wrong *and* what to do about it.
"""

from __future__ import annotations

from pruneopt.errors import PruneoptError


class ExportError(PruneoptError):
    """An export that cannot be done (unsupported model, exporter failure, non-standard ops in the graph)."""


class OnnxFileError(PruneoptError):
    """An ONNX file that cannot be used: missing, truncated, corrupted, or lacking pruneopt metadata."""


class VerificationError(ExportError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


class RuntimeUnavailableError(PruneoptError):
    """A runtime (execution provider, TensorRT, CUDA) that is not installed or cannot run here."""


class EngineError(PruneoptError):
    """A TensorRT engine file that cannot be built or loaded (missing, corrupted, or no sidecar)."""


class EngineVersionError(EngineError):
    """A TensorRT engine built by another TensorRT version (or for another GPU) than the one loading it."""
