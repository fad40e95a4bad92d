"""Exceptions for mistakes a user can make (bad name, bad spec, bad file).

The CLI turns any ``ReslabError`` into one line on stderr and a non-zero exit; anything else is a
bug and keeps its traceback.
"""


class ReslabError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class SpecError(ReslabError, ValueError):
    """A model name, builder call or YAML/JSON spec that does not describe a valid network."""


class CheckpointError(ReslabError):
    """A checkpoint or weight file that is missing, corrupt, or for another model."""


class DataError(ReslabError):
    """A dataset that is missing, corrupt, or not in the expected layout."""


class ConfigError(ReslabError, ValueError):
    """A training/experiment configuration with an unknown key or an invalid value."""
