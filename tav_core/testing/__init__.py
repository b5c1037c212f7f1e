"""Support code for the pack's tests, demo and benchmarks (not imported by the nodes)."""
