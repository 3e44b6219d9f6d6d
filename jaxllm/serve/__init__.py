"""Serving a run: an OpenAI-compatible HTTP server with continuous batching and a chat page (python -m jaxllm.serve)."""
