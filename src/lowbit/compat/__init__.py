"""Making third-party model zoos import on this project's CPU-only torch."""

from lowbit.compat.timm import ensure_torchvision_importable, import_timm

__all__ = ["import_timm", "ensure_torchvision_importable"]
