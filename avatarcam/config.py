"""Defaults from a TOML file, overridden by command-line flags.

The file lives in the user's config directory (``~/.config/avatarcam/config.toml`` on
Linux; ``AVATARCAM_CONFIG`` or ``--config FILE`` choose another) and uses the long flag
names as keys, with dashes or underscores::

    face = "~/portraits/monalisa.jpg"     # or a list: face = ["me1.jpg", "me2.jpg"]
    size = "1280x720"
    fps = 30
    mirror = true
    vcam-name = "avatarcam"
    log-level = "info"

Precedence: built-in default < config file < flag on the command line.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avatarcam.errors import AvatarcamError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

# Keys whose strings are paths: ``~`` is expanded and relative paths are taken from the
# config file's folder, so a config works from any working directory.
PATH_KEYS = {"face", "avatars", "cache_dir", "model"}
# Flags that make no sense as a default.
NOT_IN_CONFIG = {"help", "config"}


def default_config_path() -> Path:
    env = os.environ.get("AVATARCAM_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("avatarcam")) / "config.toml"


def load_config(path: str | os.PathLike, *, required: bool) -> dict[str, Any]:
    """The file's table; {} when it does not exist and was not asked for explicitly."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise AvatarcamError(f"config file {path} not found") from None
        return {}
    except IsADirectoryError:
        raise AvatarcamError(f"config file {path} is a folder") from None
    except OSError as e:
        raise AvatarcamError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise AvatarcamError(f"config file {path} is not valid TOML: {e}") from None


def _convert(action: argparse.Action, key: str, value: Any, where: Path) -> Any:
    """``value`` from the file as the flag would have produced it."""
    def bad(why: str) -> AvatarcamError:
        return AvatarcamError(f"config file {where}: {key}: {why}")

    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {value!r}")
        if isinstance(action, argparse._StoreConstAction) and action.const is not None:
            # a pair like --virtual-cam / --no-virtual-cam: true means the flag's meaning
            return action.const if value else (not action.const if isinstance(action.const, bool) else action.default)
        return value
    repeated = isinstance(action, argparse._AppendAction)
    items = value if repeated and isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, (dict, list, bool)):
            raise bad(f"expected a value like on the command line, got {item!r}")
        text = str(item)
        if action.dest in PATH_KEYS:
            p = Path(text).expanduser()
            text = str(p if p.is_absolute() else (where.parent / p))
        if action.type is not None:
            try:
                converted = action.type(text)
            except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
                raise bad(str(e) or f"invalid value {item!r}") from None
        else:
            converted = text
        if action.choices is not None and converted not in action.choices:
            raise bad(f"{item!r} is not one of {', '.join(map(str, action.choices))}")
        out.append(converted)
    return out if repeated else out[0]


def config_defaults(parser: argparse.ArgumentParser, values: dict[str, Any], where: Path) -> dict[str, Any]:
    """Parser defaults (by dest) from a config table; unknown keys are an error."""
    by_name: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                by_name.setdefault(option[2:].replace("-", "_"), []).append(action)
    defaults: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        actions = by_name.get(name)
        if not actions or name in NOT_IN_CONFIG:
            known = ", ".join(sorted(k.replace("_", "-") for k in by_name if k not in NOT_IN_CONFIG))
            raise AvatarcamError(f"config file {where}: unknown key {key!r} (known: {known})")
        action = actions[0]
        defaults[action.dest] = _convert(action, key, value, where)
    return defaults


def _config_flag(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str], *,
                      validate_with: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv`` with defaults taken from the config file (``--config FILE`` or the
    default one). Repeatable flags (``--face``) given on the command line replace the
    file's list rather than adding to it. With ``validate_with`` (the main parser, for a
    subcommand), keys are checked against that parser and only the ones ``parser`` knows
    are used."""
    explicit = _config_flag(argv)
    where = Path(explicit).expanduser() if explicit else default_config_path()
    values = load_config(where, required=explicit is not None)
    defaults = config_defaults(validate_with or parser, values, where) if values else {}
    if validate_with is not None:
        own = {a.dest for a in parser._actions}
        defaults = {k: v for k, v in defaults.items() if k in own}
    appends = {a.dest for a in parser._actions if isinstance(a, argparse._AppendAction)}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k not in appends})
    args = parser.parse_args(argv)
    for dest in appends & defaults.keys():
        if not getattr(args, dest):
            setattr(args, dest, list(defaults[dest]))
    args.config_file = str(where) if values else None
    return args
