"""Rendering engines, by name."""
from __future__ import annotations

from avatarcam.engines.warp import WarpEngine

ENGINES = {"warp": WarpEngine}
# Engines whose modules load only when asked for (the neural one opens ONNX models).
LAZY_ENGINES = {"neural": "avatarcam.engines.neural:neural_engine_class"}


def engine_class(name: str, **options):
    """The engine class for ``name``; ``options`` (e.g. ``model_dir``) go to engines that take
    them, and options left as None are ignored."""
    from avatarcam.errors import AvatarcamError

    options = {k: v for k, v in options.items() if v is not None}
    if name in LAZY_ENGINES:
        import importlib

        module, factory = LAZY_ENGINES[name].split(":")
        return getattr(importlib.import_module(module), factory)(**options)
    if name not in ENGINES:
        raise AvatarcamError(f"unknown engine {name!r}; available: {', '.join([*ENGINES, *LAZY_ENGINES])}")
    if options:  # e.g. a --model left in a config file while trying the warp engine
        import logging

        logging.getLogger(__name__).warning("the %s engine ignores %s", name, ", ".join(options))
    return ENGINES[name]
