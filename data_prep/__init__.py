"""Dataset preparation scripts: the GRID-layout reader (:mod:`data_prep.grid`) and a
generator of a small GRID-layout corpus from real components (:mod:`data_prep.synth_grid`).
See ``data_prep/README.md``."""
