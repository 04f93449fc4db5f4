"""File formats, missing-value spellings and the column-to-modality rule of the tables."""

from __future__ import annotations

import os
import re

_MISSING = frozenset({"", "na", "n/a", "nan", "null"})
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_SPLIT = re.compile(r"[_.]")


class MissingDependencyError(ImportError):
    """An optional dependency (named, with the extra that installs it) is not installed."""


def table_format(path) -> str | None:
    """``"csv"``, ``"tsv"`` or ``"parquet"`` from the file name's extension, else None."""
    return _FORMATS.get(os.path.splitext(str(path))[1].lower())


def group_columns(names) -> dict[str, list[str]]:
    """Feature columns -> modalities by the name before the first ``_`` or ``.``.

    >>> group_columns(["accel_0", "accel_1", "gyro.x", "depth"])
    {'accel': ['accel_0', 'accel_1'], 'gyro': ['gyro.x'], 'depth': ['depth']}
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        prefix = _SPLIT.split(name, maxsplit=1)[0]
        if not prefix:
            raise ValueError(
                f"column {name!r}: no modality name before its first '_' or '.'; rename it or "
                "map the columns to modalities explicitly"
            )
        groups.setdefault(prefix, []).append(name)
    return groups
