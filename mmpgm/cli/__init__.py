"""The ``mmpgm`` command line: ``demo``, ``fit``, ``infer``, ``impute``, ``prep``.

``fit`` / ``infer`` / ``impute`` read a MultimodalData ``.npz`` or a table of frames (CSV, TSV,
Parquet; :mod:`mmpgm.tabular`) and work for every model family. The defaults of their options
are read from the signatures of :func:`mmpgm.fit`, :func:`mmpgm.infer`, the model constructors
and :func:`mmpgm.tabular.read_table`, so they are the Python defaults and cannot drift.

User errors (a missing or unreadable file, a bad option value, data that do not fit the model,
an unknown modality) print one line ``mmpgm: error: <message>`` and exit with status 2, as
argparse does; ``--debug`` or ``MMPGM_DEBUG=1`` shows the traceback instead.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
