"""Networks, their flat parameter vectors, checkpoints and evaluation."""
