"""Interoperability with other toolkits: Hugging Face transformers checkpoints (safetensors)."""
