"""`ddk eval`: options -> ddk.cache.train.evaluate.evaluate_model -> table or JSON.

There is no config dataclass: the defaults are those of `evaluate_model`'s parameters,
written out here because its module imports torch (too slow for `ddk --help`);
tests/cli/test_option_defaults.py compares them with the function's signature.
"""

from __future__ import annotations

import json
from typing import Any

import click
from ddk.cli.options import Target, field_values
from ddk.cli.tables import perplexity_table

#: option -> parameter of evaluate_model where the name or value differs (cli/options.py);
#: every other option fills the parameter of its own name
OPTION_FIELDS: dict[str, Target] = {
    "model": "model_path",
    "cache": "cache_path",
    "val_sequences": "max_sequences",
    "as_json": None,
}


@click.command("eval")
@click.argument("model")
@click.option("--cache", required=True, help="Teacher cache (path or fsspec URL).")
@click.option("--val-sequences", type=int, default=500, show_default=True,
              help="Validation sequences per domain.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1... [default: cuda if available]")
@click.option("--bf16/--no-bf16", default=None,
              help="bf16 autocast. [default: on where the CUDA GPU supports it]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_model(as_json: bool, **opts: Any) -> None:
    """Per-domain validation perplexity of MODEL on the cache, and its ratio to the teacher.

    Also says whether DDK's weights would saturate for MODEL as a student (one domain taking
    almost all of the discrepancy-driven weight), before a training budget is spent on it.
    """
    from ddk.cache.train.evaluate import evaluate_model
    from ddk.cache.train.saturation import diagnose

    ppl = evaluate_model(**field_values(opts, OPTION_FIELDS))
    rows = [p.to_dict() for p in ppl]
    diagnosis = diagnose([p.domain for p in ppl], [p.ratio for p in ppl])
    if as_json:
        click.echo(json.dumps({"model": opts["model"], "cache": opts["cache"], "domains": rows,
                               "ddk_saturation": diagnosis.to_dict()}))
        return
    click.echo(perplexity_table(rows))
    click.echo(f"ddk check: {diagnosis.describe()}")
