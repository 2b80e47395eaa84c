"""The project's exception types. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class FlaresegError(Exception):
    """Base class of every error flareseg raises on purpose."""


class InputError(FlaresegError, ValueError):
    """An input file or folder is unreadable or not a valid CT / label map. The message names the file."""


class GeometryError(InputError):
    """Two volumes that must share a voxel grid do not (shape, spacing, origin or direction differ)."""


class ConfigError(FlaresegError, ValueError):
    """A configuration value or a model folder is invalid; the message names the field and the value."""


class ModelFolderError(ConfigError):
    """A model folder is missing, incomplete or of an unknown format version."""


def os_error_message(exc: OSError, path: object = None) -> str:
    """One line for an OS error (full disk, read-only file system, permission): the file it concerns
    (the error's own, else `path`) and the reason."""
    where = exc.filename or path
    return f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)


class TrainingError(FlaresegError):
    """Training cannot go on (e.g. the loss became NaN or infinite); the message names the epoch and the value."""
