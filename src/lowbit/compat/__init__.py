"""Making third-party model zoos import on this project's CPU-only torch."""

from lowbit.compat.timm import import_timm

__all__ = ["import_timm"]
