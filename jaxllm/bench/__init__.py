"""Benchmarks against transformers on the same machine, and the Shakespeare speedrun (python -m jaxllm.bench)."""
