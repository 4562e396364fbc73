"""`ddk cache-teacher` as a Python API: corpus -> packed sequences -> teacher -> store.

The job is restartable: shards already flagged done are skipped, so re-running the same
command after a crash (even SIGKILL) finishes the store, and re-running a finished job
does no teacher work. A re-run also checks this worker's finished shards against their
manifests (store/integrity.py) and writes the damaged ones again, so it repairs a store
into the one an undamaged run would have written. Several workers (`num_workers`,
`worker_index`) split the shards round-robin and write disjoint objects; whichever
finishes last marks the store complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ddk.cache.cache_job.background_writer import shard_sink
from ddk.cache.cache_job.config import CacheJobConfig, apply_defaults, validate
from ddk.cache.corpus.packing import PackedDomain, pack_domain
from ddk.cache.corpus.sources import source_fingerprint
from ddk.cache.device import resolve_device
from ddk.cache.errors import ConfigError
from ddk.cache.store.encoding import Encoding, id_dtype_for_vocab
from ddk.cache.store.id_order import corpus_id_order
from ddk.cache.store.integrity import MANIFEST_META, check_store
from ddk.cache.store.layout import FORMAT_VERSION, META_KEY, SPLITS, check_output, num_shards
from ddk.cache.store.writer import CacheWriter
from ddk.cache.teacher.backend import TeacherBackend, TeacherScores
from ddk.cache.teacher.identity import teacher_identity, tokenizer_fingerprint
from ddk.cache.teacher.loading import load_backend
from ddk.cache.teacher.model_dir import (
    load_teacher_tokenizer,
    resolve_teacher_path,
    teacher_limits,
)
from ddk.cache.teacher.sampled import SampleSpec, sequence_seed
from tqdm.auto import tqdm


@dataclass(frozen=True)
class CacheJobResult:
    """What one run did: shards and tokens it scored, and where the time went."""

    output: str
    complete: bool
    shards_written: int
    tokens_scored: int
    seconds: float
    teacher_seconds: float
    repaired: int = 0  # of shards_written: damaged shards written again

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds > 0 else 0.0


def _ddk_version() -> str:
    try:
        return version("ddk")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def build_metadata(cfg: CacheJobConfig, teacher_path: Path, tokenizer: Any,
                   packed: list[PackedDomain], vocab_size: int) -> dict[str, Any]:
    """The store's root metadata; everything that must match for a resume is in here."""
    identity = teacher_identity(teacher_path)
    specs = {s.name: s for s in cfg.domains}
    sampled = cfg.target == "sampled"
    id_dtype = id_dtype_for_vocab(vocab_size)
    # pcodec-remap: target ids stored by their rank in the packed corpus (store/id_order.py)
    id_order = corpus_id_order(cfg.codec_profile, [a for p in packed for a in (
        p.train, p.validation)], vocab_size, id_dtype)
    # a top-k store with raw ids is format 1, as before the sampled target existed: older
    # ddk reads it, and caches built before resume as the same job
    target = {"target": {"kind": "sampled", "draws": cfg.samples, "temperature": 1.0}
              } if sampled else {}
    return {
        "format_version": FORMAT_VERSION if sampled or id_order is not None else 1,
        "created_by": f"ddk {_ddk_version()}",
        "k": cfg.samples if sampled else cfg.k,  # slots per position
        **target,
        "seq_len": cfg.seq_len,
        "teacher": {**identity, "vocab_size": vocab_size, "backend": cfg.backend,
                    "dtype": cfg.dtype},
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer),
                      "eos_token_id": int(tokenizer.eos_token_id), "size": len(tokenizer)},
        "encoding": Encoding(id_dtype=id_dtype, logprob_step=cfg.logprob_step,
                             codec_profile=cfg.codec_profile, id_order=id_order).to_json(),
        "sequences_per_shard": cfg.sequences_per_shard,
        "shard_manifest": MANIFEST_META,
        "split": {"val_sequences": cfg.val_sequences,
                  "max_train_sequences": cfg.max_train_sequences, "seed": cfg.seed},
        "domains": {
            p.name: {"source": specs[p.name].source, "text_field": specs[p.name].text_field,
                     "source_fingerprint": source_fingerprint(specs[p.name]),
                     "documents": p.num_documents,
                     "train_sequences": int(p.train.shape[0]),
                     "validation_sequences": int(p.validation.shape[0])}
            for p in packed
        },
    }


def my_shards(meta: dict[str, Any], worker_index: int, num_workers: int
              ) -> list[tuple[str, str, int]]:
    """This worker's shards, done or not: a fixed round-robin over (domain, split, shard)."""
    per_shard = int(meta["sequences_per_shard"])
    every = [(domain, split, shard) for domain, info in meta["domains"].items()
             for split in SPLITS
             for shard in range(num_shards(int(info[f"{split}_sequences"]), per_shard))]
    return every[worker_index::num_workers]


@dataclass(frozen=True)
class ShardPlan:
    """What a run will write: `todo` (in order), of which `damaged` are repairs;
    `intact` is False when the existing store has any damage, shard or metadata."""

    todo: list[tuple[str, str, int]]
    damaged: list[tuple[str, str, int]]
    intact: bool


def shards_to_write(existing: Any, mine: list[tuple[str, str, int]], *, progress: bool
                    ) -> ShardPlan:
    """The shards of `mine` to write into `existing` (None: a store to create).

    A shard is written unless it is flagged done and every object it recorded is present
    and intact (sizes and CRC-32 against its manifest): a damaged shard is written again.
    """
    if existing is None:
        return ShardPlan(mine, [], True)
    by_split: dict[tuple[str, str], list[int]] = {}
    for domain, split, shard in mine:
        by_split.setdefault((domain, split), []).append(shard)
    report = check_store(existing, existing.attrs[META_KEY], checksums=True,
                         shards=by_split, progress=progress)
    damaged = {(d, s, i) for (d, s), shards in report.damaged_shards().items() for i in shards}
    done = set()
    for (domain, split), shards in by_split.items():
        flags = report.flags.get((domain, split))
        if flags is not None:  # else: reported as damage, every shard is written
            done |= {(domain, split, i) for i in shards if flags[i]}
    return ShardPlan([x for x in mine if x not in done or x in damaged],
                     [x for x in mine if x in damaged], report.ok)


def _teacher_vocab(cfg: CacheJobConfig, teacher_path: Path) -> int:
    """The teacher's vocabulary size, once k and seq_len are checked against its config
    (before any weights are loaded)."""
    vocab_size, max_positions = teacher_limits(teacher_path)
    if cfg.target == "sampled" and int(cfg.samples or 0) > vocab_size:
        raise ConfigError(f"--samples {cfg.samples} exceeds the teacher's vocabulary "
                          f"({vocab_size}); lower --samples")
    if cfg.target == "topk" and cfg.k > vocab_size:
        raise ConfigError(f"--k {cfg.k} exceeds the teacher's vocabulary ({vocab_size})")
    if max_positions is not None and cfg.seq_len > int(max_positions):
        raise ConfigError(f"--seq-len {cfg.seq_len} exceeds the teacher's maximum sequence "
                          f"length ({max_positions}); lower --seq-len")
    return vocab_size


def _score_shards(cfg: CacheJobConfig, writer: CacheWriter, todo: list[tuple[str, str, int]],
                  packed: list[PackedDomain], backend: TeacherBackend, tokens: int) -> float:
    """Score and write every shard in `todo`; returns the seconds spent in the teacher."""
    by_name = {p.name: p for p in packed}
    # transformers: fixed batches (memory bound); vLLM batches internally, so give it shards.
    step = cfg.batch_size if backend.backend_name == "transformers" else cfg.sequences_per_shard
    teacher_seconds = 0.0
    what = f"{cfg.samples} draws" if cfg.target == "sampled" else f"top-{cfg.k}"
    bar = tqdm(total=tokens, unit="tok", unit_scale=True, disable=not cfg.progress,
               desc=f"teacher {what} ({cfg.backend})", dynamic_ncols=True)
    # on a GPU teacher a finished shard is written on a background thread while the next
    # one is scored; its write errors surface here, after the batch that sees them
    # (background_writer.py). A CPU teacher writes in this thread (measured faster).
    try:
        on_cpu = (backend.backend_name == "transformers"
                  and resolve_device(cfg.device).type == "cpu")
        with shard_sink(writer, teacher_on_cpu=on_cpu) as sink:
            for domain, split, shard in todo:
                start, stop = writer.shard_range(domain, split, shard)
                seqs = getattr(by_name[domain], split)[start:stop]
                parts: list[TeacherScores] = []
                for b in range(0, len(seqs), step):
                    rows = range(start + b, start + min(b + step, len(seqs)))
                    sample = None if cfg.target != "sampled" else SampleSpec(
                        int(cfg.samples or 0),
                        tuple(sequence_seed(cfg.seed, domain, split, i) for i in rows))
                    t = time.perf_counter()
                    parts.append(backend.score(seqs[b:b + step], cfg.k, sample=sample))
                    teacher_seconds += time.perf_counter() - t
                    bar.update(len(seqs[b:b + step]) * cfg.seq_len)
                    sink.check()
                sink.submit(domain, split, shard, seqs, parts)
                bar.set_postfix_str(f"{domain}/{split} shard {shard}")
    finally:
        bar.close()
    return teacher_seconds


def run_cache_job(cfg: CacheJobConfig) -> CacheJobResult:
    """Build, finish or repair the teacher cache described by `cfg` (module docstring).

    Everything that can fail on the user's input (options, output location, teacher
    directory, corpus, an existing store's parameters, the teacher's weights) fails before
    the store is created or changed, so a corrected command is never blocked by debris.
    """
    t0 = time.perf_counter()
    cfg = apply_defaults(cfg)
    validate(cfg)
    if cfg.backend == "transformers":  # vLLM places the model itself
        resolve_device(cfg.device)
    check_output(cfg.output, overwrite=cfg.overwrite)
    teacher_path = resolve_teacher_path(cfg.teacher)
    vocab_size = _teacher_vocab(cfg, teacher_path)
    tokenizer = load_teacher_tokenizer(teacher_path)
    packed = [pack_domain(spec, tokenizer, cfg.seq_len, val_sequences=cfg.val_sequences,
                          max_train_sequences=cfg.max_train_sequences, seed=cfg.seed,
                          progress=cfg.progress)
              for spec in cfg.domains]
    meta = build_metadata(cfg, teacher_path, tokenizer, packed, vocab_size)
    existing = CacheWriter.existing(cfg.output, meta, overwrite=cfg.overwrite)
    plan = shards_to_write(existing, my_shards(meta, cfg.worker_index, cfg.num_workers),
                           progress=cfg.progress)
    todo = plan.todo
    if not todo and plan.intact:
        writer = CacheWriter.open(cfg.output, meta, overwrite=cfg.overwrite)
        complete = bool(writer.meta.get("complete")) or writer.finalize()
        return CacheJobResult(cfg.output, complete, 0, 0, time.perf_counter() - t0, 0.0)

    backend = None if not todo else load_backend(
        cfg.backend, teacher_path, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed, k=cfg.k,
        batch_size=cfg.batch_size, engine_options=cfg.engine_options, progress=cfg.progress)
    try:
        if backend is not None and cfg.target == "topk" and backend.vocab_size < cfg.k:
            raise ConfigError(f"--k {cfg.k} exceeds the teacher's vocabulary "
                              f"({backend.vocab_size})")
        writer = CacheWriter.open(cfg.output, meta, overwrite=cfg.overwrite)
        if not plan.intact:
            writer.mark_incomplete()
            for domain, split, shard in plan.damaged:
                writer.clear_shard(domain, split, shard)
        tokens = sum(stop - start for start, stop in (writer.shard_range(d, s, i)
                                                      for d, s, i in todo)) * cfg.seq_len
        teacher_seconds = 0.0 if backend is None else _score_shards(
            cfg, writer, todo, packed, backend, tokens)
    finally:
        if backend is not None:
            backend.close()
    complete = writer.finalize()
    return CacheJobResult(cfg.output, complete, len(todo), tokens,
                          time.perf_counter() - t0, teacher_seconds, repaired=len(plan.damaged))
