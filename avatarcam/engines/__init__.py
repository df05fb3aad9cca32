"""Rendering engines, by name."""
from __future__ import annotations

from avatarcam.engines.warp import WarpEngine

ENGINES = {"warp": WarpEngine}


def engine_class(name: str):
    from avatarcam.errors import AvatarcamError

    try:
        return ENGINES[name]
    except KeyError:
        raise AvatarcamError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}") from None
