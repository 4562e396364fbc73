"""`ddk inspect-cache`: a thin click layer over ddk.cache.inspect (registered by cli/main.py)."""

from __future__ import annotations

import json

import click


@click.command("inspect-cache")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--verify", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="N", help="Re-run the teacher on N stored validation sequences and "
                                "report how far the stored values are from the exact ones.")
@click.option("--teacher", default=None,
              help="Teacher directory for --verify. [default: the path recorded in the cache]")
@click.option("--device", default="auto", show_default=True,
              help="Device of the --verify teacher: auto, cpu, cuda, cuda:1...")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32",
              show_default=True, help="Compute dtype of the --verify teacher (fp32 = exact).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar during --verify.")
def inspect_cache(path: str, as_json: bool, verify: int, teacher: str | None, device: str,
                  dtype: str, quiet: bool) -> None:
    """Storage and fidelity statistics of the teacher cache at PATH.

    Per domain and split: sequences, tokens, stored vs logical bytes, compression ratio,
    bytes per token and per top-k entry, top-k probability mass, teacher loss and
    perplexity, missing shards; plus the layout. Works on unfinished stores too.
    """
    from ddk.cache.store.inspect import format_report
    from ddk.cache.store.inspect import inspect_cache as run_inspect

    report = run_inspect(path, verify=verify, teacher=teacher, progress=not quiet,
                         device=device, dtype=dtype)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
