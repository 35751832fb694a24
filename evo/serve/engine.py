"""The one place the server meets the corrections engine (evo.active); swapping it is this import."""

from __future__ import annotations

try:
    from evo.active import CorrectionError, Corrections
except ImportError:  # pragma: no cover - until evo.active is merged into this branch
    from evo.serve._interim import CorrectionError, Corrections

__all__ = ["CorrectionError", "Corrections"]
