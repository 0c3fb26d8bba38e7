"""Helpers shared by the tests and the benchmarks (fixtures built from real data); the package never imports them."""
