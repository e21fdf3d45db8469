"""The one exception family of the library; only the CLI turns these into messages and exit codes."""

from __future__ import annotations

from typing import Any

from dip_export.text import visible


class DipError(Exception):
    """Root of every error the library raises on purpose. Its message is escaped when it is made (`text.visible`):
    a path, name or value in it, whoever typed or stored it, reaches an API caller with no control character, as
    one line, and the CLI prints it escaped once."""

    exit_code = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*(visible(arg) if isinstance(arg, str) else arg for arg in args))

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "args":  # a message rewritten later (a file named as typed) is escaped the same way
            value = tuple(visible(arg) if isinstance(arg, str) else arg for arg in value)
        super().__setattr__(name, value)


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


class KeptFilesWarning(UserWarning):
    """Files the tool found where it was replacing its own output (put there by someone else meanwhile), kept and said:
    the CLI prints it as one `warning:` line (`cli.handle_errors`)."""
