"""Benchmarks of rawbackend against Celery's DatabaseBackend and the bare-driver floor.

Run with ``python -m benchmarks`` (see README.md in this folder).
"""
