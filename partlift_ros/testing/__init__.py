"""Helpers that the benchmarks and tests share (real-frame loading, sensor variants, the previous release,
CLIP fidelity gates); never imported by the library itself."""
