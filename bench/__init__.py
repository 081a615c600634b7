"""Benchmarks against peers; each module prints its figures and ratios (see docs/benchmarks.md)."""
