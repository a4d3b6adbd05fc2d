"""Project exception and warning classes: every error a user can cause names the problem."""

from __future__ import annotations


class MeloraError(Exception):
    """Base class of errors caused by input (missing data, bad arguments, wrong adapter)."""


class DataNotFoundError(MeloraError, FileNotFoundError):
    """A dataset split is available neither locally (`MELORA_DATA_DIR`) nor from the hub."""


class AdapterError(MeloraError, ValueError):
    """An adapter directory is missing, of an unknown kind, or made for another base model."""


class ProtocolError(MeloraError, ValueError):
    """A task name, split or tokenizer does not fit the task protocol."""


class MeloraWarning(UserWarning):
    """Warning for an option that is set but ignored, or a result that needs a caveat."""
