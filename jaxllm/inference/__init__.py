"""Inference: the KV cache and the weights a decoding step reads (laid out by the kernel set), and sampling."""
