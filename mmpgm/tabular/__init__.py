"""Tables of frames <-> :class:`~mmpgm.data.MultimodalData`: the CSV / Parquet input of the CLI.

The format is one row per frame:

* a **sequence-id** column (default ``sequence``; any text or number) says which sequence the
  frame belongs to; sequences keep the order of their first row;
* a **time** column (default ``time``; numbers) orders the frames of a sequence (rows may come
  in any order; two rows of one sequence with the same time are an error). Time only orders:
  gaps are not filled, so a missing frame is a row with empty cells;
* **feature** columns, grouped into modalities by the name before the first ``_`` or ``.``
  (``accel_0, accel_1, accel.z, gyro_x`` -> ``accel`` (3-d) and ``gyro`` (1-d); a column
  without ``_`` or ``.`` is a 1-d modality of its own name), in the order of the columns; or an
  explicit mapping ``modalities={"accel": ["ax", "ay"], ...}`` (then only the named columns are
  read and the others ignored);
* optional **label** columns, named explicitly (``labels={"speech": "vad"}``; several columns
  make a vector label per frame). A label whose values are all integers is stored as int64 with
  ``-1`` for empty cells and padding; otherwise (or when named in ``float_labels``) as floats with
  NaN.

Empty cells (and ``NA``, ``N/A``, ``NaN``, ``null``, any case) are missing values: NaN, so the
frame counts as unobserved in that modality. Ragged sequences are padded and get ``lengths``.
The reader keeps the sequence ids and times in ``data.meta["sequence_ids"]`` and
``data.meta["time"]``, which :func:`write_table` and :func:`write_frames` write back.

CSV needs only numpy and the standard library (``.csv`` comma-, ``.tsv`` tab-separated, UTF-8);
Parquet (``.parquet``, ``.pq``) needs pandas and pyarrow (``pip install "mmpgm[parquet]"``).
"""

from ._formats import MissingDependencyError, group_columns, table_format
from .reading import from_columns, read_table
from .writing import write_frames, write_table

__all__ = [
    "MissingDependencyError",
    "table_format",
    "group_columns",
    "read_table",
    "from_columns",
    "write_frames",
    "write_table",
]
