"""Exceptions for mistakes a user can fix. The CLI prints them without a stack trace."""


class AlignCapError(Exception):
    """Base class: the message names the item that is wrong and what to do about it."""


class DataError(AlignCapError):
    """A manifest, audio file or dataset cannot be used as given."""


class ConfigError(AlignCapError):
    """A configuration value or CLI option is invalid."""


class StorageError(AlignCapError):
    """A local or S3 location cannot be read or written."""
