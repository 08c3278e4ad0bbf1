"""Throughput and memory benchmarks of the trainer; see benchmarks/README.md."""
