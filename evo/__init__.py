"""evo: keep a trained CNN learning by function-preserving growth, incremental learning and corrections."""

from evo.errors import EvoError

__version__ = "0.1.0"
__all__ = ["EvoError", "__version__"]
