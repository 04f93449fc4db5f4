"""The one helper that keeps the result types' old field names working for one release.

The result vocabulary (see README "Result types") renamed some fields. Each old name stays
readable as a property of the NamedTuple class that emits a :class:`FutureWarning` naming the
new field and returns its value (or, where the old field held a different form of the same
numbers, that form computed from the new field). ``_fields`` holds only the new names, so
``_replace``, ``_asdict`` and construction take the new names only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

__all__ = ["deprecated_fields"]


def _alias(cls_name: str, old: str, new: str, convert: Callable | None):
    def get(self):
        warnings.warn(f"{cls_name}.{old} is deprecated; use .{new}", FutureWarning, stacklevel=2)
        return getattr(self, new) if convert is None else convert(self)

    get.__name__ = old
    get.__doc__ = f"Deprecated alias of :attr:`{new}` (emits a FutureWarning)."
    return property(get)


def deprecated_fields(**aliases):
    """Class decorator: ``old=new`` (or ``old=(new, convert)``) read-only deprecated aliases.

    Parameters
    ----------
    **aliases : str or (str, callable)
        Old attribute name -> the new field's name, or -> ``(new, convert)`` where
        ``convert(result)`` gives the old field's form from the new fields (e.g. a standard
        deviation from a covariance); ``new`` is then the name the warning points to.

    Returns
    -------
    callable
        The decorator; it adds the properties and records them in ``cls._deprecated_fields``
        (old -> new), which the tests read.
    """

    def decorate(cls):
        table = {}
        for old, target in aliases.items():
            new, convert = (target, None) if isinstance(target, str) else target
            assert new in cls._fields or hasattr(cls, new), (cls.__name__, new)
            assert old not in cls._fields, (cls.__name__, old)
            setattr(cls, old, _alias(cls.__name__, old, new, convert))
            table[old] = new
        cls._deprecated_fields = {**getattr(cls, "_deprecated_fields", {}), **table}
        return cls

    return decorate
