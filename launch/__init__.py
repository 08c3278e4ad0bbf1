"""Launchers of the trainer: one machine, several workers, a cluster, Kubernetes, a Cloud TPU VM.

Run the Python ones from the repository root as modules (`python -m launch.NAME`);
BUILD.md shows each.
"""
