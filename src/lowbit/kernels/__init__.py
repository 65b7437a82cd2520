"""Integer kernels: fast CPU paths (:mod:`.cpu`) and their pure-PyTorch oracle (:mod:`.reference`)."""

from lowbit.kernels import cpu, reference

__all__ = ["cpu", "reference"]
