"""Evaluation across stages: held-out text, multiple choice, preference accuracy and sample replies."""
