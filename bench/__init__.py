"""Benchmarks: each module measures against a baseline in the same run and prints ratios."""
