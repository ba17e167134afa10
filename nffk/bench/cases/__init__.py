"""Benchmark cases, one module per op (see `nffk.bench.registry`)."""
