"""Quantization algorithms: pure math cores, one file each, written in their paper's notation."""
