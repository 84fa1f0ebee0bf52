# cython: language_level=3
"""Machine-limit probes for the benchmarks (read bandwidth, FMA and int8 throughput)."""
