"""Post-training error correction: CLE, bias correction, AdaRound, GPTQ, SmoothQuant, AWQ.

Chosen with ``lowbit.quantize(model, scheme, calibration=..., algorithm=NAME or [NAMES])``;
the math of each is in :mod:`lowbit.algorithms`, the adapters that feed it calibration data are
here: :mod:`~lowbit.ptq.rescale` (CLE, SmoothQuant, AWQ) and :mod:`~lowbit.ptq.sequential`
(RTN/GPTQ/AdaRound rounding and bias correction, layer by layer).
"""

from lowbit.ptq.options import ALGORITHMS, PTQOptions, parse_algorithms

__all__ = ["ALGORITHMS", "PTQOptions", "parse_algorithms"]
