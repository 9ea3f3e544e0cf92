"""Benchmarks for SPEC section 11; ``scripts/bench`` runs them and writes ``docs/benchmarks.md``.

``run`` is the orchestrator (this repository's virtual environment). ``worker`` is
what it starts for every measurement, in this repository's environment or in the
one that holds the ``fastapi-tasks`` 0.1.0 wheel: both install the import name
``fastapi_tasks`` and offer the same ``Tasks`` / ``add_tasks`` surface, so the same
app code drives both.
"""
