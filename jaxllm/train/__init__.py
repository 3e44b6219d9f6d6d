"""Training: the pure step, the optimizer, checkpoints, multi-host start-up, the loop, and its command."""
