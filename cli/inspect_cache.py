"""`ddk inspect-cache`: options -> ddk.cache.store.report.inspect_cache -> table or JSON.

There is no config dataclass: the defaults are those of `inspect_cache`'s parameters,
written out here because its module imports torch (too slow for `ddk --help`);
tests/cli/test_option_defaults.py compares them with the function's signature.
"""

from __future__ import annotations

import json
import operator
from typing import Any

import click
from ddk.cache.teacher.loading import TEACHER_DTYPES
from ddk.cli.options import Target, field_values

#: option -> parameter of ddk.cache.store.report.inspect_cache where the name or value
#: differs (cli/options.py); every other option fills the parameter of its own name
OPTION_FIELDS: dict[str, Target] = {
    "quiet": ("progress", operator.not_),
    "as_json": None,
}


@click.command("inspect-cache")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--verify", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="N", help="Re-run the teacher on N stored validation sequences and "
                                "report how far the stored values are from the exact ones.")
@click.option("--check", is_flag=True,
              help="Also read every shard object and compare its CRC-32 with the one recorded "
                   "when it was written (reads the whole store; sizes are always checked).")
@click.option("--teacher", default=None,
              help="Teacher directory for --verify. [default: the path recorded in the cache]")
@click.option("--device", default="auto", show_default=True,
              help="Device of the --verify teacher: auto, cpu, cuda, cuda:1...")
@click.option("--dtype", type=click.Choice(TEACHER_DTYPES), default="fp32",
              show_default=True, help="Compute dtype of the --verify teacher (fp32 = exact).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar during --verify.")
def inspect_cache(as_json: bool, **opts: Any) -> None:
    """Storage and fidelity statistics of the teacher cache at PATH.

    Per domain and split: sequences, tokens, stored vs logical bytes, compression ratio,
    bytes per token and per top-k entry, top-k probability mass, teacher loss and
    perplexity, missing shards, damaged objects; plus the layout. Works on unfinished
    stores too. Exits with status 1 when an object is damaged (after the report).
    """
    from ddk.cache.errors import DamagedCacheError
    from ddk.cache.store.report import inspect_cache as run_inspect
    from ddk.cache.store.report_text import format_report

    report = run_inspect(**field_values(opts, OPTION_FIELDS))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    damaged = report["integrity"]["damaged"]
    if damaged:
        noun = "object" if len(damaged) == 1 else "objects"
        raise DamagedCacheError(
            f"cache {opts['path']} is damaged: {len(damaged)} {noun} (listed above); re-run "
            "the `ddk cache-teacher` command that built it to rewrite the damaged shards")
