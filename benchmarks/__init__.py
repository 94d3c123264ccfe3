"""Benchmarks of the pause/resume layer: ``python -m benchmarks`` writes benchmarks/RESULTS.md."""
