"""Neural and parameter-holding building blocks."""

from .module import TypedPyroModule

__all__ = ["TypedPyroModule"]
