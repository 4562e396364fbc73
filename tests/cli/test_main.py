"""`ddk --help` and option errors must not pay for importing torch (about 2 s on 2 cores)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_entry_point_does_not_import_torch():
    code = ("import sys; from ddk.cli.main import cli; "
            "from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(cli, ['demo', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", f"torch was imported by the CLI's entry point: {out[:200]}"
