"""Benchmarks of maae-study: one module per benchmark, each with ``run(settings) -> Outcome``.

``python benchmarks/run_all.py`` runs them all, prints one table and writes ``benchmarks/results/<date>.json``
(see ``benchmarks/README.md``).
"""
