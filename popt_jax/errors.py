"""User errors: problems with input, not bugs. `popt_jax.main` prints them as one line.

Every error a user can cause (a bad file, a wrong path, a config value that cannot work)
derives from `UserError`; `main` catches the base class, prints `error: <message>` on
stderr and exits with code 2. Messages are one line and name the file or field at fault.
"""

from __future__ import annotations

import os


def one_line(message) -> str:
    """`message` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(message).split())


class UserError(ValueError):
    """Base of every error caused by input; the message is one line."""

    def __init__(self, message: str = ""):
        super().__init__(one_line(message))


class DataError(UserError):
    """A data file is missing, malformed or inconsistent; the message is one line naming it."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        text = one_line(message)
        super().__init__(f"{os.fspath(path)}: {text}" if path is not None else text)
        self.path = None if path is None else os.fspath(path)
        self.detail = text

    def __reduce__(self):  # survive pickling into/out of worker processes
        return (type(self), (self.path, self.detail))


class TrainingError(UserError):
    """A run that cannot start or cannot go on (the message is one line)."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.detail = str(self)


class ConversionError(UserError):
    """A checkpoint that cannot be turned into a popt_jax model."""


class CheckpointError(UserError):
    """A checkpoint file is corrupt, truncated, or uses an unsupported feature."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint references a pickled global outside the allow-list."""


class ConfigError(UserError):
    """A config value that cannot work; the message is `config.<field>: <problem>`."""
