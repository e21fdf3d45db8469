"""The one exception family of the library; only the CLI turns these into messages and exit codes."""

from __future__ import annotations


class DipError(Exception):
    """Root of every error the library raises on purpose."""

    exit_code = 1


class UsageError(DipError):
    """A bad argument from the user (unknown class, impossible size, ...)."""

    exit_code = 2


class CheckpointError(DipError):
    """A checkpoint that is missing, unreadable, untrusted or of the wrong architecture."""


class ExportError(DipError):
    """An export that failed or did not verify against PyTorch."""


class NonFiniteError(DipError):
    """Sampling produced NaN or infinite values (broken weights or export, or a precision that overflowed)."""


class MissingDependencyError(DipError):
    """An optional package (tensorrt, onnxruntime, ...) is needed but not installed."""

    def __init__(self, package: str, hint: str, message: str | None = None) -> None:
        super().__init__(message or f"{package} is not installed: {hint}")
        self.package = package
