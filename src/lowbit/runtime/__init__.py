"""Graph runtimes for quantized models: ``lowbit.compile`` and its backends."""

from lowbit.runtime.compiling import BACKENDS, Candidate, CompiledModel, compile  # noqa: A004

__all__ = ["BACKENDS", "Candidate", "CompiledModel", "compile"]
