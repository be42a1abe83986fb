"""The study platform around MAAE: hyperparameter and ablation studies on Ray Tune + Optuna, and their reports.

- :mod:`study.cli`: the command line (``python study/run.py``, ``python -m study run``, ``maae-study run``):
  everything is validated before Ray starts, then the study runs;
- :mod:`study.space`: the search-space files (``search_spaces/*.yaml``), validated, and translated for
  Optuna and Tune;
- :mod:`study.protocol`: the results contract, one set of names for writers and readers;
- :mod:`study.results`: the results tables a study keeps while it runs (and reads back to resume);
- :mod:`study.tune`: running the trials on Ray (one Ray Train run of MAAE's own training per trial);
- :mod:`study.report`: the report of one or several finished or running studies.

``study`` imports ``maae``'s public API and never builds tensors itself; ``maae`` never imports ``study``.
"""
