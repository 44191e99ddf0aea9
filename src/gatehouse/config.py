"""Settings for a command from a YAML file, the environment and flags (later wins).

Precedence, lowest first: the option's default < the `--config` YAML file < environment
variables `GATEHOUSE_<OPTION>` (upper case, dashes as underscores, e.g. `GATEHOUSE_LISTEN`,
`GATEHOUSE_METRICS_PORT`) < command-line flags.

YAML keys are the long option names without the leading dashes, with dashes or underscores
(`metrics-port` or `metrics_port`). An unknown key or a value of the wrong type is a
`ConfigError`; unknown `GATEHOUSE_*` variables are ignored (other commands use some, e.g.
`GATEHOUSE_ADDR`), and an empty variable counts as unset.

Works on any argparse parser: `prepare_parser` records each option's default and type and
makes argparse leave options that were not given on the command line out of the namespace,
so that a flag given explicitly (even with the default value) still overrides the file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "GATEHOUSE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class ConfigError(ValueError):
    """A configuration file, variable or value is invalid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # long option name without dashes: "metrics-port"
    dest: str  # attribute name: "metrics_port"
    kind: type  # str, int, float or bool
    default: Any
    choices: tuple[Any, ...] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def flag(self) -> str:
        return f"--{self.name}"


def _kind(action: argparse.Action) -> type:
    if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
        return bool
    if action.type in (int, float):
        return action.type
    return str


def prepare_parser(
    parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ("help", "config")
) -> dict[str, Option]:
    """Record every long option of `parser` and make argparse omit options not given.

    Call after the last `add_argument`. `%(default)s` in help texts keeps working.
    Returns the options by `dest`.
    """
    options: dict[str, Option] = {}
    for action in parser._actions:  # argparse has no public accessor
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest in exclude or action.default is argparse.SUPPRESS:
            continue
        if action.help and "%(default)" in action.help:
            action.help = action.help.replace("%(default)s", str(action.default))
        choices = tuple(action.choices) if action.choices is not None else None
        options[action.dest] = Option(
            longs[0][2:], action.dest, _kind(action), action.default, choices
        )
        action.default = argparse.SUPPRESS
    return options


def _convert(opt: Option, value: Any, where: str, text: bool = False) -> Any:
    """Check `value` (from YAML) for `opt`; with `text`, first parse it from a string."""
    want = _KIND_NAMES[opt.kind]
    if text and isinstance(value, str):
        raw = value.strip()
        try:
            if opt.kind is bool:
                if raw.lower() in _TRUE:
                    value = True
                elif raw.lower() in _FALSE:
                    value = False
                else:
                    raise ValueError(raw)
            elif opt.kind is int:
                value = int(raw)
            elif opt.kind is float:
                value = float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected {want}, got {value!r}") from None
    ok = (
        isinstance(value, bool)
        if opt.kind is bool
        else isinstance(value, opt.kind) and not isinstance(value, bool)
    )
    if opt.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{where}: expected {want}, got {value!r}")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, opt.choices))}")
    return value


def load_file(path: str | Path, options: Mapping[str, Option]) -> dict[str, Any]:
    """The settings in a YAML file, by `dest`; raise ConfigError for anything invalid."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {p}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: not valid YAML: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {p}: must be a mapping of option names to values")
    by_name = {o.name: o for o in options.values()}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {p}: key {key!r} is not a string")
        opt = by_name.get(key.replace("_", "-"))
        if opt is None:
            known = ", ".join(sorted(by_name))
            raise ConfigError(f"config file {p}: unknown key {key!r} (known: {known})")
        if value is None:
            continue  # `key:` with no value means the default
        values[opt.dest] = _convert(opt, value, f"config file {p}: {key}")
    return values


def from_env(options: Mapping[str, Option], environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings in `GATEHOUSE_<OPTION>` variables, by `dest` (empty = unset)."""
    values: dict[str, Any] = {}
    for opt in options.values():
        raw = environ.get(opt.env)
        if raw is None or raw.strip() == "":
            continue
        values[opt.dest] = _convert(opt, raw, opt.env, text=True)
    return values


def resolve(
    options: Mapping[str, Option],
    given: Mapping[str, Any],
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every option's value: default < `config_file` < environment < `given` (flags).

    `config_file` falls back to `GATEHOUSE_CONFIG`. `given` holds only what was on the
    command line (see `prepare_parser`); keys that are not options are ignored.
    """
    env = os.environ if environ is None else environ
    if config_file is None:
        config_file = env.get(ENV_PREFIX + "CONFIG") or None
    values = {dest: opt.default for dest, opt in options.items()}
    if config_file is not None:
        values.update(load_file(config_file, options))
    values.update(from_env(options, env))
    values.update({k: v for k, v in given.items() if k in options})
    return values


def resolve_namespace(
    args: argparse.Namespace,
    options: Mapping[str, Option],
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """`args` (parsed by a `prepare_parser` parser, with an optional `config` attribute)
    completed from the config file, the environment and the defaults."""
    given = vars(args)
    resolved = resolve(options, given, given.get("config"), environ)
    out = argparse.Namespace(**given)
    for k, v in resolved.items():
        setattr(out, k, v)
    return out
