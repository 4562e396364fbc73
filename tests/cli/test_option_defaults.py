"""One source of defaults: every option's default is that of the field it fills.

Walks every option of every `ddk` command, follows the command module's OPTION_FIELDS
(cli/options.py) to the config-dataclass field or API-function parameter the option fills,
and compares click's default, converted the way the command converts it, with that field's
default (value and type). Options that fill no field are listed in NO_FIELD with their
defaults, so a new option fails here until it is mapped or listed. Then each command is run
with no options and the config it builds, or the call it makes, is compared with the
dataclass's or function's own defaults.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import click
import pytest
from click.testing import CliRunner
from ddk.cache.cache_job.config import CacheJobConfig, apply_defaults
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.demo import DemoConfig
from ddk.cache.train.config import TrainConfig
from ddk.cli import cache_teacher, demo, evaluate, inspect_cache, train_student
from ddk.cli.main import cli
from ddk.cli.options import target

REQUIRED = object()  # a field or parameter without a default


def dataclass_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED
    return out


def signature_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    return {name: REQUIRED if p.default is p.empty else p.default
            for name, p in inspect.signature(fn).parameters.items()}


def inspect_cache_fn() -> Callable[..., Any]:
    from ddk.cache.store.report import inspect_cache as fn
    return fn


def evaluate_model_fn() -> Callable[..., Any]:
    from ddk.cache.train.evaluate import evaluate_model
    return evaluate_model


#: command -> (its module's OPTION_FIELDS, what they fill: a config dataclass, or the API
#: function as a callable returning it (its module imports torch, so only when needed))
FILLS: dict[str, tuple[dict[str, Any], Any]] = {
    "cache-teacher": (cache_teacher.OPTION_FIELDS, CacheJobConfig),
    "inspect-cache": (inspect_cache.OPTION_FIELDS, inspect_cache_fn),
    "train-student": (train_student.OPTION_FIELDS, TrainConfig),
    "eval": (evaluate.OPTION_FIELDS, evaluate_model_fn),
    "demo": (demo.OPTION_FIELDS, DemoConfig),
}

#: (command, option) -> default, for the options that fill no field (OPTION_FIELDS None)
NO_FIELD: dict[tuple[str, str], Any] = {
    ("cache-teacher", "config_path"): None,
    # no --domain: CacheJobConfig.domains stays empty (the bundled demo corpus)
    ("cache-teacher", "domain_args"): tuple(CacheJobConfig().domains),
    ("cache-teacher", "text_field"): DomainSpec.text_field,
    # no engine option: CacheJobConfig.engine_options stays empty
    **{("cache-teacher", name): None for name in cache_teacher.ENGINE_OPTIONS},
    **{(name, "as_json"): False for name in FILLS},
}


def defaults_of(command: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(OPTION_FIELDS, field -> default, what the fields belong to) of the command."""
    option_fields, fills = FILLS[command]
    if dataclasses.is_dataclass(fills):
        return option_fields, dataclass_defaults(fills), fills.__name__
    fn = fills()
    return option_fields, signature_defaults(fn), f"{fn.__module__}.{fn.__name__}()"


def click_defaults(command: click.Command) -> dict[str, Any]:
    """The values the command function receives for options not given on the command line."""
    return command.make_context(command.name, [], resilient_parsing=True).params


OPTIONS = [(name, p.name) for name, command in sorted(cli.commands.items())
           for p in command.params]

def test_every_command_is_checked():
    assert set(cli.commands) == set(FILLS)
    assert not set(NO_FIELD) - set(OPTIONS), "NO_FIELD lists options that do not exist"
    assert ("train-student", "lr") in OPTIONS


@pytest.mark.parametrize("command,option", [
    pytest.param(c, o, id=f"{c}:{o}") for c, o in OPTIONS])
def test_option_default_is_its_fields(command, option):
    option_fields, defaults, owner = defaults_of(command)
    param = next(p for p in cli.commands[command].params if p.name == option)
    given = click_defaults(cli.commands[command])[option]
    field, convert = target(option_fields, option)
    if field is None:
        assert (command, option) in NO_FIELD, (
            f"{command} {option} fills no field: map it in OPTION_FIELDS or list its "
            "default in NO_FIELD")
        expected = NO_FIELD[command, option]
        assert (type(given), given) == (type(expected), expected)
        return
    assert (command, option) not in NO_FIELD, f"{command} {option} fills {field!r}"
    assert field in defaults, f"{command} {option}: {field!r} is not a field of {owner}"
    expected = defaults[field]
    if expected is REQUIRED:
        assert param.required and given is None, f"{command} {option}: {field!r} is required"
        return
    assert not param.required, f"{command} {option} is required, {field!r} has a default"
    got = convert(given)
    assert (type(got), got) == (type(expected), expected), (
        f"{command} {option}: click default {given!r} -> {got!r}, but {owner} {field} "
        f"defaults to {expected!r}")


def test_computed_defaults_in_the_help_are_the_configs():
    """--seq-len and co. default to None; their help spells out what the job then picks."""
    demo_cfg = apply_defaults(CacheJobConfig())
    own_cfg = apply_defaults(CacheJobConfig(domains=[DomainSpec("code", "data/code")]))
    text = {p.name: p.help for p in cli.commands["cache-teacher"].params}
    assert (f"[default: {own_cfg.seq_len}; {demo_cfg.seq_len} for the demo corpus]"
            in text["seq_len"])
    assert (f"[default: {own_cfg.val_sequences} (the paper); {demo_cfg.val_sequences} "
            "for the demo corpus]" in text["val_sequences"])
    assert own_cfg.max_train_sequences is None
    assert (f"[default: all; {demo_cfg.max_train_sequences} for the demo]"
            in text["max_train_sequences"])


class Called(Exception):
    """Raised by a stand-in for the function a command calls, to stop it there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.positional, self.kwargs = args, kwargs


def called_with(monkeypatch, where: str, args: list[str]) -> Called:
    """Run `ddk ARGS` with the function `where` (module.name) replaced; how it was called."""
    def stand_in(*a: Any, **kw: Any) -> None:
        raise Called(*a, **kw)

    monkeypatch.setattr(where, stand_in)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, Called), result.output
    return result.exception


def test_no_options_build_the_default_configs(monkeypatch):
    call = called_with(monkeypatch, "ddk.cache.cache_job.run.run_cache_job", ["cache-teacher"])
    assert call.positional == (CacheJobConfig(),)

    required = {"cache": "c", "student": "s", "out": "o"}
    call = called_with(monkeypatch, "ddk.cache.train.loop.train",
                       ["train-student", *(f"--{k}={v}" for k, v in required.items())])
    assert call.positional == (TrainConfig(**required),)

    call = called_with(monkeypatch, "ddk.cli.demo.run_demo", ["demo"])
    assert call.positional == (DemoConfig(),)


def test_no_options_call_inspect_cache_with_its_defaults(monkeypatch):
    fn = inspect_cache_fn()
    call = called_with(monkeypatch, "ddk.cache.store.report.inspect_cache",
                       ["inspect-cache", "store"])
    assert call.kwargs == {name: "store" if default is REQUIRED else default
                           for name, default in signature_defaults(fn).items()}


def test_no_options_call_evaluate_model_with_its_defaults(monkeypatch):
    fn = evaluate_model_fn()
    call = called_with(monkeypatch, "ddk.cache.train.evaluate.evaluate_model",
                       ["eval", "model", "--cache", "store"])
    given = {"model_path": "model", "cache_path": "store"}
    assert call.kwargs == {name: given[name] if default is REQUIRED else default
                           for name, default in signature_defaults(fn).items()}
