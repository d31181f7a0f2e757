"""Benchmarks: each prints figures and ratios against a peer (never timed tests)."""
