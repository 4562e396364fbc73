"""`ddk demo`: options -> DemoConfig -> run_demo -> table or JSON."""

from __future__ import annotations

import json
import operator
from typing import Any

import click
from ddk.cache.demo import METHODS, DemoConfig, format_regime, format_table, run_demo
from ddk.cli.options import Target, field_values


def parse_methods(text: str) -> tuple[str, ...]:
    """--methods cpt,kd -> ("cpt", "kd"); unknown or no methods are a usage error."""
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise click.BadParameter(f"unknown method(s) {bad}; choose from {METHODS}",
                                 param_hint="--methods")
    return chosen


#: option -> DemoConfig field where the name or value differs (cli/options.py); every other
#: option fills the field of its own name
OPTION_FIELDS: dict[str, Target] = {
    "methods": ("methods", parse_methods),
    "quiet": ("progress", operator.not_),
    "as_json": None,
}


@click.command("demo")
@click.option("-o", "--out", default=DemoConfig.out, show_default=True,
              help="Output directory (cache, student, runs, plots, summary).")
@click.option("--teacher", default=DemoConfig.teacher,
              help="Model directory. Default: embedded SmolLM2-135M.")
@click.option("--steps", type=int, default=DemoConfig.steps, show_default=True,
              help="Optimizer steps per method (same token budget for every method).")
@click.option("--student-layers", type=int, default=DemoConfig.student_layers,
              show_default=True, help="Decoder layers of the teacher kept in the student.")
@click.option("--train-sequences", type=int, default=DemoConfig.train_sequences,
              show_default=True, help="Cached training sequences per domain.")
@click.option("--val-sequences", type=int, default=DemoConfig.val_sequences, show_default=True)
@click.option("--seq-len", type=int, default=DemoConfig.seq_len, show_default=True)
@click.option("--interval", type=int, default=DemoConfig.interval, show_default=True,
              help="DDK re-weighting interval K in steps.")
@click.option("--methods", default=",".join(DemoConfig.methods), show_default=True,
              help="Comma-separated subset of cpt,kd,ddk.")
@click.option("--seed", type=int, default=DemoConfig.seed, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(as_json: bool, **opts: Any) -> None:
    """Cache the teacher, derive a student, train it with cpt/kd/ddk, compare per domain.

    Runs on the embedded default (SmolLM2-135M-Instruct, bundled 8-domain corpus) in a few
    minutes on 2 CPU cores. Everything lands in --out; re-running skips finished stages.
    """
    result = run_demo(DemoConfig(**field_values(opts, OPTION_FIELDS)))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(format_table(result))
    click.echo(format_regime(result) + "\n")
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    click.echo(f"written to {result.out}/ (summary.md, summary.json"
               + "".join(f", {p.name}" for p in result.plots) + ")")
