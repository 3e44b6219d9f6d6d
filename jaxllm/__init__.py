"""jaxllm: build a language model from raw text to an aligned chat model, in JAX/Flax NNX."""
