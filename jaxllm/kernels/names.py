"""Names that every kernel set gives the same tensors, so that a remat policy means the same on every backend."""

ATTENTION_OUT = "attention_out"  # the attention's output (B,T,H,Dh), before the output projection
ATTENTION_LSE = "attention_lse"  # a kernel's softmax log-normaliser, where its backward pass reads one
