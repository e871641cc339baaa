"""Benchmarks: ``python -m tests.bench [NAME ...]`` runs each ``bench_*.py`` module's ``main()`` (or all).

Each benchmark prints its own figures side by side with a baseline measured in the same run.
"""
