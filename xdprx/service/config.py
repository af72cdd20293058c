"""`xdprx run --config FILE.toml`: the file's values become the parser's defaults.

Keys are the long options of `xdprx run` (dashes or underscores: `max-frames`
or `max_frames`), plus `iface`. Repeatable options take lists
(`group = ["239.1.2.3:5000"]`). Options given on the command line override
the file; a list on the command line replaces the file's list. An unknown key
or a wrong type is one ConfigError naming the key.

SIGHUP (reread): the daemon reads the file again; its groups are applied
live (Receiver.set_groups), other options that changed are only reported:
they need a restart.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import ConfigError

# str options that may also be written as TOML integers (a uid, a NUMA node, a port)
INT_AS_STR = {"allow_uid", "allow_gid", "numa", "metrics", "queues", "cpus"}
NOT_IN_FILE = {"config", "help", "fn"}


def load(path: str) -> dict[str, Any]:
    """The TOML table in @path; ConfigError (one line) if unreadable or not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}", e.errno,
                          "pass the path of a TOML file (see examples/xdprx.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: not valid TOML: {e}",
                          remedy="see examples/xdprx.toml") from None


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action for every option @parser accepts from a file."""
    return {a.dest: a for a in parser._actions
            if a.dest not in NOT_IN_FILE and a.help != argparse.SUPPRESS}


def _check(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """@value converted for @action, or ConfigError naming @key."""
    def bad(want: str) -> ConfigError:
        return ConfigError(f"config {path}: {key} = {value!r}: expected {want}",
                           remedy="fix the value (see examples/xdprx.toml)")

    names = {int: "an integer", float: "a number", str: "a string"}

    def scalar(v: Any, want: type) -> Any:
        if isinstance(v, bool):       # TOML true/false is not a number (bool is an int)
            raise bad(names[want])
        if want is float and isinstance(v, (int, float)):
            return float(v)
        if want is int and isinstance(v, int):
            return v
        if want is str and (isinstance(v, str) or (isinstance(v, int) and action.dest in INT_AS_STR)):
            return str(v)
        raise bad(names[want])

    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    want = action.type if action.type in (int, float) else str
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [scalar(v, want) for v in items]
    value = scalar(value, want)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"config {path}: {key} = {value!r}: expected one of "
                          f"{', '.join(map(str, action.choices))}", remedy="fix the value")
    return value


def defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings as {dest: value} for @parser, validated."""
    opts = options(parser)
    out: dict[str, Any] = {}
    for key, value in load(path).items():
        dest = key.replace("-", "_")
        if key == "interface":
            dest = "iface"
        if dest not in opts:
            known = ", ".join(sorted(d.replace("_", "-") for d in opts))
            raise ConfigError(f"config {path}: unknown key {key!r}", remedy=f"known keys: {known}")
        if dest in out:
            raise ConfigError(f"config {path}: {key!r} is given twice (dashes and underscores)",
                              remedy="keep one")
        out[dest] = _check(path, key, value, opts[dest])
    return out


def apply(parser: argparse.ArgumentParser, path: str) -> dict[str, list]:
    """Make the file's scalar settings @parser's defaults (the next parse lets the
    command line override them). Returns the list settings, to use when the
    command line gave none (argparse would append to a list default)."""
    values = defaults(path, parser)
    lists = {k: v for k, v in values.items() if isinstance(v, list)}
    parser.set_defaults(**{k: v for k, v in values.items() if k not in lists})
    return lists


# not options, or applied live: never reported as needing a restart
NOT_COMPARED = {"group", "cmd", "fn", "config", "argv", "cli_groups"}


@dataclass
class Reread:
    groups: list[str] | None   # None: --group on the command line overrides the file
    restart: list[str]         # other options whose value changed: they need a restart


def reread(path: str, argv: list[str], start: argparse.Namespace,
           parse: Callable[[list[str]], argparse.Namespace]) -> Reread:
    """The file at @path again, under the same command line (@argv, parsed by
    @parse with a fresh parser): the groups to receive and what else changed
    against @start. ConfigError (one line naming the key) if the file is bad."""
    from ..groups import parse_groups
    try:
        new = parse(argv)
    except SystemExit:   # argparse already printed why; should not happen (same argv)
        raise ConfigError(f"config {path}: the options do not parse",
                          remedy="check the file against `xdprx run --help`") from None
    try:
        parse_groups(new.group)
    except ConfigError as e:
        raise ConfigError(f"config {path}: group: {e.what}", remedy=e.remedy) from None
    restart = sorted(k.replace("_", "-") for k, v in vars(new).items()
                     if k not in NOT_COMPARED and v != getattr(start, k, None))
    return Reread(None if getattr(start, "cli_groups", False) else list(new.group), restart)
