"""Settings from defaults < --config YAML < GATEHOUSE_* environment < flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gatehouse.cli.main import build_parser
from gatehouse.config import ConfigError, prepare_parser, resolve, resolve_namespace


def _serve(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(["serve", *argv])
    return resolve_namespace(args, args.config_options, environ=env or {})


def _yaml(tmp: Path, text: str) -> str:
    p = tmp / "gatehouse.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_without_file_env_or_flags() -> None:
    a = _serve([])
    assert (a.listen, a.workers, a.threads, a.grace) == ("127.0.0.1:50051", 1, 16, 5.0)
    assert a.metrics_port is None and a.max_data_age is None and a.no_reflection is False


def test_file_keys_with_dashes_or_underscores(tmp_path: Path) -> None:
    cfg = _yaml(
        tmp_path,
        "listen: 0.0.0.0:6000\nmetrics-port: 9464\nmax_data_age: 30\n"
        "no-reflection: true\nbundle: https://b.example/bundle.tar.gz\n",
    )
    a = _serve(["--config", cfg])
    assert a.listen == "0.0.0.0:6000" and a.metrics_port == 9464
    assert a.max_data_age == 30.0 and isinstance(a.max_data_age, float)
    assert a.no_reflection is True and a.bundle == "https://b.example/bundle.tar.gz"
    assert a.threads == 16  # not in the file: default


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, "listen: 0.0.0.0:6000\nthreads: 4\nworkers: 3\n")
    env = {"GATEHOUSE_LISTEN": "127.0.0.1:7000", "GATEHOUSE_THREADS": "8"}
    a = _serve(["--config", cfg], env)
    assert (a.listen, a.threads, a.workers) == ("127.0.0.1:7000", 8, 3)
    a = _serve(["--config", cfg, "--threads", "2", "--listen", "127.0.0.1:50051"], env)
    # A flag wins even when it repeats the default value.
    assert (a.listen, a.threads, a.workers) == ("127.0.0.1:50051", 2, 3)


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, "grace: 1.5\n")
    assert _serve([], {"GATEHOUSE_CONFIG": cfg}).grace == 1.5


def test_env_types_and_empty_values() -> None:
    env = {
        "GATEHOUSE_NO_REFLECTION": "yes",
        "GATEHOUSE_METRICS_PORT": " 9100 ",
        "GATEHOUSE_MAX_DATA_AGE": "2.5",
        "GATEHOUSE_UNIX": "",  # empty = unset
        "GATEHOUSE_ADDR": "127.0.0.1:1",  # another command's variable: ignored
    }
    a = _serve([], env)
    assert a.no_reflection is True and a.metrics_port == 9100 and a.max_data_age == 2.5
    assert a.unix is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listne: 127.0.0.1:1\n", "unknown key 'listne'"),
        ("metrics-port: nine\n", "metrics-port: expected an integer, got 'nine'"),
        ("metrics-port: '9464'\n", "expected an integer"),
        ("workers: true\n", "workers: expected an integer, got True"),
        ("grace: soon\n", "grace: expected a number"),
        ("no-reflection: 1\n", "no-reflection: expected true or false"),
        ("listen: 50051\n", "listen: expected a string"),
        ("- listen\n", "must be a mapping"),
        ("listen: [\n", "not valid YAML"),
        ("config: other.yaml\n", "unknown key 'config'"),
    ],
)
def test_invalid_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _serve(["--config", _yaml(tmp_path, text)])
    assert message in str(ei.value)
    assert "gatehouse.yaml" in str(ei.value)  # says which file


def test_null_value_means_default_and_empty_file_is_fine(tmp_path: Path) -> None:
    assert _serve(["--config", _yaml(tmp_path, "threads:\n")]).threads == 16
    assert _serve(["--config", _yaml(tmp_path, "")]).threads == 16


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml"):
        _serve(["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEHOUSE_METRICS_PORT": "x"}, "GATEHOUSE_METRICS_PORT: expected an integer"),
        ({"GATEHOUSE_NO_REFLECTION": "maybe"}, "GATEHOUSE_NO_REFLECTION: expected true or false"),
        ({"GATEHOUSE_GRACE": "1s"}, "GATEHOUSE_GRACE: expected a number"),
    ],
)
def test_invalid_env(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _serve([], env)
    assert message in str(ei.value)


def test_generic_parser_choices_and_help(tmp_path: Path) -> None:
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--mode", choices=["a", "b"], default="a", help="mode (default %(default)s)")
    p.add_argument("--n", type=int, default=3)
    options = prepare_parser(p)
    assert "mode (default a)" in p.format_help()
    assert vars(p.parse_args([])) == {}  # nothing given on the command line
    assert resolve(options, vars(p.parse_args(["--n", "5"])), environ={}) == {"mode": "a", "n": 5}
    assert resolve(options, {}, environ={"GATEHOUSE_MODE": "b"})["mode"] == "b"
    with pytest.raises(ConfigError, match="GATEHOUSE_MODE: must be one of a, b"):
        resolve(options, {}, environ={"GATEHOUSE_MODE": "c"})
    with pytest.raises(ConfigError, match="mode: must be one of a, b"):
        resolve(options, {}, _yaml(tmp_path, "mode: c\n"), environ={})


def test_serve_help_renders() -> None:
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["serve", "--help"])
    assert ei.value.code == 0
