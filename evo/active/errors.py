"""The corrections engine's error type."""

from __future__ import annotations

from evo.errors import EvoError


class CorrectionError(EvoError, ValueError):
    """A correction, undo or query was refused: bad image, bad label, unknown or undone id, empty pool."""
