"""Model rewrites applied before quantization (BatchNorm folding, ...)."""
