"""Errors that reach the user. Each message names the file, line or field and says what to do."""


class LmforgeError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(LmforgeError, ValueError):
    """A config field is missing, unknown or out of range."""


class DataError(LmforgeError, ValueError):
    """Input data cannot be read or is unusable."""


class TrainingError(LmforgeError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


class StorageError(LmforgeError, OSError):
    """A file or folder cannot be written: disk full, read-only file system, missing permission."""
