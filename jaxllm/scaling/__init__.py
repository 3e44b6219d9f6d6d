"""Scaling: published compute-optimal rules (laws), fitting our own (fit), and the IsoFLOP sweep (sweep)."""
