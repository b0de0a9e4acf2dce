"""Errors a user can fix: the CLI prints their message as one line and exits with code 2."""


class MedclassifyError(Exception):
    """Base class for every error caused by the user's input, files or options.

    Args:
        message: one line saying what is wrong and what was expected.
        parameters: the Python parameters (or config fields) the message names by their names, so
            that the command line can show each as its option instead (``format`` -> ``--format``).
    """

    def __init__(self, message: str, *, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.parameters = parameters


class ConfigError(MedclassifyError, ValueError):
    """An option or configuration value is impossible (a ``ValueError``, as scikit-learn's are)."""


class DataError(MedclassifyError):
    """A data file or folder is missing, unreadable or not in the expected layout."""


class CheckpointError(MedclassifyError):
    """A checkpoint or run folder cannot be used."""


class OutputError(MedclassifyError):
    """An output cannot be written (read-only folder, a parent that is a file, a full disk), or its
    folder is in use by another medclassify process."""


class TrainingDiverged(MedclassifyError):
    """The loss or the model's outputs stopped being finite numbers."""


def first_line(exc: object, limit: int = 200) -> str:
    """An exception's (or a reason's) first message line (at most ``limit`` characters), or its type when it has no
    message: what a one-line error may quote of a library's long or multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
