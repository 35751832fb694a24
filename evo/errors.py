"""evo's exception types: every user-facing failure is an EvoError whose message names the input and the fix."""

from __future__ import annotations


class EvoError(Exception):
    """Base of every error evo raises on purpose; catch this to handle any evo failure."""


class ConfigError(EvoError, ValueError):
    """A parameter, option or config value is out of range or of the wrong kind."""


class UnknownNameError(EvoError, KeyError):
    """A name (operator, model, source, strategy) is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GraphError(EvoError, ValueError):
    """An architecture graph is malformed: a cycle, a dangling edge, a shape mismatch."""


class TraceError(EvoError):
    """A module could not be traced or uses an op evo does not support."""


class InvalidSiteError(EvoError, ValueError):
    """A growth operator was applied where it does not apply."""


class WeightsError(EvoError, ValueError):
    """A weights file is corrupt, tampered, non-finite, or does not match its graph."""


class DataError(EvoError, ValueError):
    """Input data is missing, unreadable, empty or mislabelled."""


class OutOfRangeError(EvoError, IndexError):
    """An index past the end of an evo sequence (a stream's increments); an IndexError, as for a list."""
