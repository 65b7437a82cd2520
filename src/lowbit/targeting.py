"""Which layers get which scheme: include/exclude globs and per-pattern overrides by module name.

A pattern matches a module name by glob (``encoder.*.fc?``) or as a prefix of the dotted path
(``encoder`` matches ``encoder.layer.0.fc``).

>>> cfg = QuantConfig(get_preset("W8A8"), exclude=("head",), overrides=(("enc.*", get_preset("W8A16")),))
>>> scheme_for("enc.fc", cfg).name, scheme_for("head", cfg)
('W8A16', None)
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from lowbit.config import QuantConfig, QuantScheme

__all__ = ["matches", "scheme_for"]


def matches(name: str, pattern: str) -> bool:
    """True when ``pattern`` globs ``name`` or names one of its enclosing modules."""
    return fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def scheme_for(name: str, config: QuantConfig) -> QuantScheme | None:
    """The scheme of module ``name`` under ``config``; None when it stays in float."""
    if config.include and not any(matches(name, p) for p in config.include):
        return None
    if any(matches(name, p) for p in config.exclude):
        return None
    for pattern, scheme in config.overrides:
        if matches(name, pattern):
            return scheme
    return config.scheme
