"""Shared building blocks of the benchmarks (see bench/README.md)."""
