"""Errors a user can fix: the CLI prints their message as one line and exits with code 2."""


class MedclassifyError(Exception):
    """Base class for every error caused by the user's input, files or options."""


class ConfigError(MedclassifyError):
    """An option or configuration value is impossible."""


class DataError(MedclassifyError):
    """A data file or folder is missing, unreadable or not in the expected layout."""


class CheckpointError(MedclassifyError):
    """A checkpoint or run folder cannot be used."""
