"""Errors a user can cause; the CLI prints their message (no traceback) and exits with status 2."""


class DataPrepError(Exception):
    """Base class: the message says what is wrong and what to do about it."""


class ConfigError(DataPrepError):
    """The config file or an override is invalid."""


class SourceError(DataPrepError):
    """A source's files are missing or unreadable."""


class TokenizerError(DataPrepError):
    """SentencePiece refused the settings, or an existing model cannot be used."""


class StageFailed(DataPrepError):
    """A stage raised on more than a small share of its documents: a bug, not odd input."""
