"""The one place the server meets the corrections engine (evo.active)."""

from __future__ import annotations

from evo.active import CorrectionError, Corrections

__all__ = ["CorrectionError", "Corrections"]
