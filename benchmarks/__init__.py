"""Benchmarks (GenEval, OCR, PickScore): shipped prompt sets, scorers, versions.

See :mod:`benchmarks.base` for the interface and :mod:`benchmarks.registry` for lookup.
Nothing heavy is imported here.
"""
