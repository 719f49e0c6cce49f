"""Batch side of Visual Search: the Ray Data ingestion pipeline and the ``python -m batch_jobs`` CLI."""
