"""The model: the decoder (transformer), its exact parameter and FLOP counts (accounting), and the one log-prob
scorer every stage uses (scoring). Import the submodule you need: accounting needs no JAX."""
