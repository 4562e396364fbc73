"""The `ddk` group: `ddk --help` and option errors must not pay for importing torch (about
2 s on 2 cores); user errors and Ctrl-C become exit codes."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner
from ddk.cache.errors import ConfigError
from ddk.cli.main import DDKGroup

VERBS = ("cache-teacher", "inspect-cache", "train-student", "eval", "demo")


def test_cli_entry_point_does_not_import_torch():
    code = ("import sys; from ddk.cli.main import cli; "
            "from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            f"verbs = {VERBS!r}; assert sorted(cli.commands) == sorted(verbs), cli.commands; "
            "rs = [CliRunner().invoke(cli, [v, '--help']) for v in verbs]; "
            "assert all(r.exit_code == 0 for r in rs), [r.output for r in rs]; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", f"torch was imported by the CLI's entry point: {out[:200]}"


def raising(exc: BaseException):
    def callback() -> None:
        raise exc
    return callback


def test_group_turns_user_errors_and_ctrl_c_into_exit_codes():
    """DDKError: `error: <msg>` and exit 1; Ctrl-C: exit 130; anything else keeps its trace."""
    group = DDKGroup(name="ddk")
    raised = {"user-error": ConfigError("--k must be >= 1"), "ctrl-c": KeyboardInterrupt(),
              "bug": ValueError("a bug")}
    for name, exc in raised.items():
        group.add_command(click.Command(name, callback=raising(exc)))
    runner = CliRunner()

    r = runner.invoke(group, ["user-error"])
    assert (r.exit_code, r.stderr, r.stdout) == (1, "error: --k must be >= 1\n", "")
    r = runner.invoke(group, ["ctrl-c"])
    assert r.exit_code == 130 and r.stderr.startswith("interrupted; re-run the same command")
    r = runner.invoke(group, ["bug"])
    assert isinstance(r.exception, ValueError) and r.stderr == ""
