#!/usr/bin/env python3
"""Replication of DDK vs KD vs CPT on the 8-domain benchmark corpus (docs/results.md).

    python bench/replicate.py --preset paper --out replicate-paper # the paper's regime, 2 CPU cores
    python bench/replicate.py --preset gpu --out replicate-gpu     # compression regime, one GPU
    python bench/replicate.py --preset cpu --out replicate-cpu     # compression regime, 2 CPU cores
    python bench/replicate.py --preset smoke --teacher T --corpus C --out X   # tests

Two regimes (Preset): *compression*, a student of a few of the teacher's layers, tens to
hundreds of times behind it, where DDK's weights saturate; and *paper*, the teacher minus two
late layers, briefly healed with KD, a small factor behind it with uneven gaps, the regime of
the DDK paper's pretrained students.

Stages, each resumable (a finished run is skipped when the script is re-run; a run killed
half-way is redone from its start):
  1. cache: the teacher's top-64 over the corpus (train split capped per domain by the
     preset; validation = DDK's measuring set, plus, in the compression presets, a held-out
     test set after it). The paper preset tests on a second cache, test-cache/, of documents
     the first never read (test-corpus/: each domain's documents after the last one packed).
  2. student: a pruned copy of the teacher (demo.derive_student): evenly spaced layers
     pre-trained briefly with CE on a skewed domain mix (compression), or the teacher minus
     `drop_layers` healed with KD on the uniform mix (paper).
  3. runs, all from that student at the same token budget (steps x batch x seq_len):
     main      cpt (natural mix), kd (uniform), kd (natural), ddk; for every seed
     ablation  ddk with interval K/2 and 2K, without smoothing (alpha = 1), gamma 0.1 / 0.5
     loss      kd (uniform) on the cached top-k for k in {8, 16, 64}: tail bucket vs
               renormalised top-k; on a sampled-target cache (sampled-N/, the same
               sequences, N draws per position) for each N of `loss_samples`; and
               full-vocabulary KD with the teacher run online
  4. report: every run's held-out per-domain perplexity -> results.json, results.md, plots/.

"natural" is the corpus's own token proportions (tokenised in full), not the capped cache's,
so it differs from uniform even when the preset caches the same number of sequences per domain.
No method sees the test sequences; ddk measures its gaps on the measuring set only.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_CORPUS = REPO / "bench" / "data" / "corpus"


@dataclass
class Preset:
    """The experiment's scale and regime; every run of one experiment uses the same numbers.

    Two student regimes. *Compression* (`student_layers`): a few evenly spaced teacher layers,
    pre-trained with CE on a skewed mix; the student starts tens to hundreds of times worse
    than the teacher. *Paper* (`drop_layers`): the teacher minus one or two late layers,
    healed briefly with KD on the uniform mix; it starts within a small factor of the teacher
    with uneven gaps, the regime of the DDK paper's pretrained students.
    """

    seq_len: int
    train_sequences: int | None       # cached per domain (None: all)
    val_weight: int                   # validation sequences ddk measures gaps on
    val_test: int                     # held-out test sequences per domain, after those
    student_layers: int | None        # decoder layers kept from the teacher (compression)
    pretrain_steps: int               # the student's preparation: skewed CE, or KD healing
    steps: int                        # optimizer steps per run (equal token budget)
    batch_size: int
    interval: int                     # ddk re-weighting interval K (steps)
    lr: float
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_seeds: tuple[int, ...] = (0,)
    loss_seeds: tuple[int, ...] = (0,)
    loss_ks: tuple[int, ...] = (8, 16, 64)
    loss_samples: tuple[int, ...] = ()  # kd on a sampled-target cache of N draws, per N
    cache_k: int = 64
    eval_batch_size: int = 16
    drop_layers: tuple[int, ...] = ()  # paper regime: drop exactly these teacher layers
    pretrain: str = "skew"            # "skew": CE on the skewed mix; "heal": KD, uniform mix
    held_out_docs: bool = False       # test on documents the cache never read (else: on
                                      # validation windows after ddk's measuring set)
    baseline_interval: int | None = None  # kd / cpt measure every this many steps (None: K)
    groups: tuple[str, ...] = ("main", "ablation", "loss")  # what a plain run runs


PRESETS: dict[str, Preset] = {
    # one H100/H200: ~2.1 M tokens per run (512 steps x 16 x 256), K = 32 steps
    "gpu": Preset(seq_len=256, train_sequences=None, val_weight=32, val_test=64,
                  student_layers=8, pretrain_steps=200, steps=512, batch_size=16,
                  interval=32, lr=3e-4, seeds=(0, 1, 2), ablation_seeds=(0, 1, 2),
                  loss_seeds=(0, 1, 2)),
    # 2 CPU cores, about 40 minutes: 48 steps x 4 x 128 tokens per run
    # loss_samples: sampled targets at about the bytes of top-16 (N = 48: 39.9 vs 38.8 B/token)
    # and as close to top-64's as uint8 counts reach (N = 255), docs/codecs.md
    "cpu": Preset(seq_len=128, train_sequences=48, val_weight=6, val_test=10, student_layers=6,
                  pretrain_steps=40, steps=48, batch_size=4, interval=8, lr=3e-4,
                  loss_samples=(48, 255)),
    # the paper's regime on 2 CPU cores: the teacher minus layers 24 and 26, healed with
    # 24 KD steps; 64 steps x 4 x 64 tokens per run, 8 re-weightings (K = 8)
    "paper": Preset(seq_len=64, train_sequences=256, val_weight=16, val_test=24,
                    student_layers=None, drop_layers=(24, 26), pretrain="heal",
                    pretrain_steps=8, steps=64, batch_size=4, interval=8, lr=3e-5,
                    held_out_docs=True, baseline_interval=64, groups=("main", "ablation")),
    # the test suite: tiny models, a few steps
    "smoke": Preset(seq_len=32, train_sequences=8, val_weight=2, val_test=2, student_layers=1,
                    pretrain_steps=2, steps=4, batch_size=2, interval=2, lr=1e-3, seeds=(0, 1),
                    loss_ks=(2, 4), cache_k=4, eval_batch_size=4, loss_samples=(4,)),
    # the test suite, paper regime: the tiny teacher minus one layer, healed 2 KD steps
    "paper-smoke": Preset(seq_len=32, train_sequences=8, val_weight=2, val_test=2,
                          student_layers=None, drop_layers=(1,), pretrain="heal",
                          pretrain_steps=2, steps=8, batch_size=2, interval=2, lr=1e-3,
                          seeds=(0, 1, 2), cache_k=4, eval_batch_size=4, held_out_docs=True,
                          baseline_interval=8, groups=("main", "ablation")),
}

# skewed pre-training mix: two domains get ten times the weight of each other one
DEFAULT_SKEW = {"python_code": 10.0, "bible": 10.0}
MAIN_METHODS = ("cpt", "kd-uniform", "kd-natural", "ddk")


@dataclass
class RunSpec:
    """One training run: a label for the tables, and the TrainConfig fields it sets."""

    group: str                                   # main | ablation | loss
    label: str                                   # e.g. "ddk", "ddk K=32", "k=8 renorm"
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    cache: str = "cache"                         # the cache it trains on (a dir under --out)

    @property
    def key(self) -> str:
        """Identical configurations share one run (e.g. kd-uniform is also loss k=64 bucket)."""
        where = {} if self.cache == "cache" else {"cache": self.cache}
        return json.dumps({"seed": self.seed, **self.options, **where}, sort_keys=True)

    @property
    def dirname(self) -> str:
        parts = [] if self.cache == "cache" else [self.cache]
        parts += [f"{k}-{v}" for k, v in sorted(self.options.items())
                  if k not in ("domain_weights", "online_teacher")]
        if "online_teacher" in self.options:
            parts.append("online")
        if "domain_weights" in self.options:
            parts.append("natural")
        return "_".join(parts + [f"seed-{self.seed}"]).replace("/", "-")


def plan_runs(p: Preset, natural: dict[str, float], teacher: str) -> list[RunSpec]:
    """Every run of the experiment, main grid first."""
    nat = {"domain_weights": natural}
    main = {"cpt": {"method": "cpt", **nat}, "kd-uniform": {"method": "kd", "mixture": "uniform"},
            "kd-natural": {"method": "kd", **nat}, "ddk": {"method": "ddk"}}
    runs = [RunSpec("main", m, s, dict(main[m])) for s in p.seeds for m in MAIN_METHODS]
    half, double = max(1, p.interval // 2), p.interval * 2
    ablations = {f"ddk K={half}": {"interval": half}, f"ddk K={double}": {"interval": double},
                 "ddk no smoothing (alpha=1)": {"alpha": 1.0},
                 "ddk gamma=0.1": {"gamma": 0.1}, "ddk gamma=0.5": {"gamma": 0.5}}
    runs += [RunSpec("ablation", name, s, {"method": "ddk", **o})
             for s in p.ablation_seeds for name, o in ablations.items()]
    for s in p.loss_seeds:
        for k in p.loss_ks:
            for tail in ("bucket", "renorm"):
                o: dict[str, Any] = {"method": "kd", "mixture": "uniform"}
                if k != p.cache_k:
                    o["kd_topk"] = k
                if tail != "bucket":
                    o["kd_tail"] = tail
                runs.append(RunSpec("loss", f"k={k} {tail}", s, o))
        for n in p.loss_samples:
            runs.append(RunSpec("loss", f"sampled N={n}", s,
                                {"method": "kd", "mixture": "uniform"}, cache=f"sampled-{n}"))
        runs.append(RunSpec("loss", "full vocabulary (online teacher)", s,
                            {"method": "kd", "mixture": "uniform", "online_teacher": teacher}))
    return runs


# -- stages ---------------------------------------------------------------------------------
def domain_specs(corpus: Path) -> list[Any]:
    from ddk.cache.corpus.sources import DomainSpec
    from ddk.cache.errors import ConfigError

    files = sorted(corpus.glob("*.jsonl.gz")) + sorted(corpus.glob("*.jsonl"))
    if not files:
        raise ConfigError(f"no *.jsonl(.gz) domain files in {corpus}")
    return [DomainSpec(f.name.split(".")[0], str(f)) for f in files]


def natural_mixture(specs: list[Any], teacher: Path, out: Path) -> dict[str, float]:
    """Each domain's share of the corpus's tokens (the whole corpus, tokenised once)."""
    path = out / "natural_mixture.json"
    if path.is_file():
        return json.loads(path.read_text())
    from ddk.cache.corpus.sources import iter_documents
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    counts = {}
    for spec in specs:
        docs = list(iter_documents(spec))
        counts[spec.name] = sum(len(ids) + 1 for ids in tok(docs)["input_ids"])  # + EOS
    total = sum(counts.values())
    mix = {name: c / total for name, c in counts.items()}
    path.write_text(json.dumps(mix, indent=2))
    return mix


def build_cache(p: Preset, specs: list[Any], teacher: Path, out: Path, progress: bool, *,
                samples: int | None = None) -> str:
    """The training cache (top-k), or with `samples` a sampled-target cache of the same
    sequences (out/sampled-N)."""
    from ddk.cache.cache_job.config import CacheJobConfig
    from ddk.cache.cache_job.run import run_cache_job

    target = {} if samples is None else {"target": "sampled", "samples": samples}
    job = run_cache_job(CacheJobConfig(
        output=str(out / ("cache" if samples is None else f"sampled-{samples}")),
        domains=specs, teacher=str(teacher), k=p.cache_k,
        seq_len=p.seq_len, val_sequences=p.val_weight + (0 if p.held_out_docs else p.val_test),
        max_train_sequences=p.train_sequences, progress=progress, **target))
    return job.output


def build_student(p: Preset, teacher: Path, cache: str, skew: dict[str, float], out: Path,
                  progress: bool) -> Path:
    """The student every run starts from: a pruned teacher, then `pretrain_steps` of CE on
    the skewed mix (compression regime) or of KD on the uniform mix (paper regime, healing
    the pruning)."""
    from ddk.cache.demo import derive_student
    from ddk.cache.train.config import TrainConfig
    from ddk.cache.train.loop import train

    final = out / "student"
    if (final / "config.json").is_file():
        return final
    pruned = derive_student(teacher, out / "student-pruned", p.student_layers,
                            drop_layers=p.drop_layers)
    run_dir = out / "student-pretrain"
    shutil.rmtree(run_dir, ignore_errors=True)
    mix: dict[str, Any] = ({"method": "kd", "mixture": "uniform"} if p.pretrain == "heal"
                           else {"method": "cpt", "domain_weights": skew})
    train(TrainConfig(cache=cache, student=str(pruned), out=str(run_dir), **mix,
                      val_sequences=p.val_weight, batch_size=p.batch_size,
                      max_steps=p.pretrain_steps, interval=p.pretrain_steps, lr=p.lr,
                      min_lr=p.lr / 10, seed=12345, checkpoint_every=0, progress=progress))
    shutil.copytree(run_dir / "model", final.with_name("student.tmp"), dirs_exist_ok=True)
    final.with_name("student.tmp").rename(final)
    return final


def unread_documents(spec: Any, tokenizer: Any, tokens_read: int, seed: int = 0) -> list[str]:
    """The domain's documents that a cache reading its first `tokens_read` packed tokens
    never touched: those after the last one it read, in the packing's shuffled order."""
    from ddk.cache.corpus.packing import document_order
    from ddk.cache.corpus.sources import iter_documents

    texts = list(iter_documents(spec))
    order = document_order(len(texts), seed, spec.name)
    total = 0
    for j, i in enumerate(order):
        total += len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]) + 1  # + EOS
        if total >= tokens_read:
            return [texts[k] for k in order[j + 1:]]
    return []


def build_test_cache(p: Preset, specs: list[Any], teacher: Path, out: Path,
                     progress: bool) -> str:
    """A cache of `val_test` validation sequences per domain cut from documents the training
    cache never read (held-out documents, not held-out windows of shared documents)."""
    from ddk.cache.cache_job.config import CacheJobConfig
    from ddk.cache.cache_job.run import run_cache_job
    from ddk.cache.corpus.sources import DomainSpec
    from ddk.cache.errors import ConfigError
    from transformers import AutoTokenizer

    if p.train_sequences is None:
        raise ConfigError("a held-out-document test set needs a train_sequences cap: "
                          "without one the training cache reads every document")
    corpus = out / "test-corpus"
    if not corpus.is_dir():
        tok = AutoTokenizer.from_pretrained(teacher)
        read = (p.val_weight + (p.train_sequences or 0)) * p.seq_len
        tmp = out / "test-corpus.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for spec in specs:
            docs = unread_documents(spec, tok, read)
            if not docs:
                raise ConfigError(f"domain {spec.name!r} has no documents left for a held-out "
                                  "test set: lower the preset's train_sequences")
            with (tmp / f"{spec.name}.jsonl").open("w") as f:
                f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
        tmp.rename(corpus)
    job = run_cache_job(CacheJobConfig(
        output=str(out / "test-cache"), teacher=str(teacher), k=p.cache_k, seq_len=p.seq_len,
        domains=[DomainSpec(s.name, str(corpus / f"{s.name}.jsonl")) for s in specs],
        val_sequences=p.val_test, max_train_sequences=1, progress=progress))
    return job.output


def evaluate_test(model: Any, test: tuple[str, int], p: Preset) -> list[dict[str, Any]]:
    """Per-domain perplexity on the held-out test sequences: `test` is (cache, index of the
    first test sequence in its validation split)."""
    from ddk.cache.train.evaluate import evaluate_domains
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(test[0])
    return [x.to_dict() for x in evaluate_domains(
        model, reader, max_sequences=p.val_test, first=test[1],
        batch_size=p.eval_batch_size)]


def run_one(spec: RunSpec, p: Preset, cache: str, test: tuple[str, int], student: Path,
            out: Path, progress: bool) -> dict[str, Any]:
    """Train one run (or load its result if it finished before) and score the test set."""
    from ddk.cache.train.config import TrainConfig
    from ddk.cache.train.loop import train

    run_dir = out / "runs" / spec.dirname
    result_file = run_dir / "test.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    t = time.perf_counter()
    options = {"cache": cache, "student": str(student), "out": str(run_dir),
               "val_sequences": p.val_weight, "batch_size": p.batch_size, "max_steps": p.steps,
               "interval": p.interval, "lr": p.lr, "min_lr": p.lr / 10, "seed": spec.seed,
               "checkpoint_every": 0, "progress": progress,
               "eval_batch_size": p.eval_batch_size, **spec.options}
    if spec.options.get("method") != "ddk" and p.baseline_interval and "interval" not in spec.options:
        options["interval"] = p.baseline_interval  # a fixed mix: measured only for the logs
    res = train(TrainConfig(**options))
    if res.interrupted_by is not None:
        raise KeyboardInterrupt
    record = {"key": spec.key, "seed": spec.seed, "options": spec.options,
              "train_seconds": time.perf_counter() - t, "tokens": res.tokens,
              "weight_history": res.history, "test": evaluate_test(res.model, test, p)}
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.rename(result_file)
    shutil.rmtree(run_dir / "model", ignore_errors=True)  # weights are not needed for the report
    return record


# -- summaries ------------------------------------------------------------------------------
def geo_mean_ratio(test: list[dict[str, Any]]) -> float:
    return math.exp(sum(math.log(d["ratio"]) for d in test) / len(test))


def worst_ratio(test: list[dict[str, Any]]) -> float:
    return max(d["ratio"] for d in test)


def spread(values: list[float]) -> str:
    """'mean ± std [min, max]' over seeds (just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} "
            f"[{min(values):.3f}, {max(values):.3f}]")


def summarise(groups: dict[str, dict[str, list[dict[str, Any]]]]
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per group and label: geo-mean and worst-domain ratio per seed, and per-domain ratios."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, by_label in groups.items():
        out[group] = {}
        for label, records in by_label.items():
            domains = [d["domain"] for d in records[0]["test"]]
            out[group][label] = {
                "seeds": [r["seed"] for r in records],
                "geo_mean_ratio": [geo_mean_ratio(r["test"]) for r in records],
                "worst_ratio": [worst_ratio(r["test"]) for r in records],
                "domain_ratio": {dom: [r["test"][i]["ratio"] for r in records]
                                 for i, dom in enumerate(domains)},
                "domain_ppl": {dom: [r["test"][i]["student_ppl"] for r in records]
                               for i, dom in enumerate(domains)},
                "train_seconds": [r["train_seconds"] for r in records],
            }
    return out


def _ddk_history(runs: list[RunSpec], records: dict[str, dict[str, Any]]
                 ) -> dict[int, list[dict[str, Any]]]:
    """The main ddk runs' weight histories by seed."""
    return {r.seed: records[r.key]["weight_history"] for r in runs
            if r.group == "main" and r.label == "ddk" and records[r.key].get("weight_history")}


def format_weights(history: list[dict[str, Any]], domains: list[str]) -> list[str]:
    """One ddk run's weights per interval, with the ratios they were computed from."""
    lines = ["| step | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for h in history:
        ratios = [s / t for s, t in zip(h["ppl_student"], h["ppl_teacher"])]
        lines.append(f"| {h['step']} | " + " | ".join(
            f"{w:.3f} ({r:.2f})" for w, r in zip(h["weights"], ratios)) + " |")
    return lines


def format_report(summary: dict[str, Any], start: list[dict[str, Any]], preset: str,
                  p: Preset, seconds: float, *,
                  ddk_history: dict[int, list[dict[str, Any]]] | None = None) -> str:
    lines = [f"Preset `{preset}`: {json.dumps(asdict(p))}", "",
             f"Total wall time {seconds / 60:.1f} min.", ""]
    lines += [("Test set: " + ("validation sequences of documents the training cache never "
               "read (test-cache/, from test-corpus/)." if p.held_out_docs else
               "the validation sequences after ddk's measuring set (windows of the same "
               "shuffled document stream; the document at the validation/train boundary is "
               "shared).")), ""]
    lines += [("Held-out test perplexity ratio student/teacher per domain; 'geo-mean' is the "
               "geometric mean over the domains, 'worst' the largest domain ratio. Over seeds: "
               "mean ± std [min, max]."), ""]
    main = summary.get("main", {})
    if main:
        lines += ["### Main comparison (equal token budget)", "",
                  "| method | seeds | geo-mean ratio | worst-domain ratio |", "|---|---|---|---|"]
        lines += [f"| {m} | {len(v['seeds'])} | {spread(v['geo_mean_ratio'])} | "
                  f"{spread(v['worst_ratio'])} |" for m, v in main.items()]
        labels = list(main)
        lines += ["", "### Per domain (ratio, mean over seeds)", "",
                  "| domain | teacher ppl | student at start | " + " | ".join(labels) + " |",
                  "|---|---|---|" + "---|" * len(labels)]
        for d in start:
            cells = [d["domain"], f"{d['teacher_ppl']:.2f}", f"{d['ratio']:.2f}"]
            cells += [f"{statistics.mean(main[m]['domain_ratio'][d['domain']]):.2f}"
                      for m in labels]
            lines.append("| " + " | ".join(cells) + " |")
    if ddk_history:
        seed = min(ddk_history)
        lines += ["", f"### DDK weights, seed {seed} (in brackets: the measured ratio)", ""]
        lines += format_weights(ddk_history[seed], [d["domain"] for d in start])
    for group, title in (("ablation", "DDK ablations"),
                         ("loss", "Loss on the cached target (top-k, sampled, full)")):
        rows = summary.get(group, {})
        if not rows:
            continue
        lines += ["", f"### {title}", "", ("| variant | seeds | geo-mean ratio | worst-domain "
                  "ratio | train s/run |"), "|---|---|---|---|---|"]
        if group == "ablation" and "ddk" in main:
            rows = {f"ddk K={p.interval}, alpha=0.5, gamma=0.2 (main)": main["ddk"], **rows}
        lines += [f"| {label} | {len(v['seeds'])} | {spread(v['geo_mean_ratio'])} | "
                  f"{spread(v['worst_ratio'])} | {statistics.mean(v['train_seconds']):.0f} |"
                  for label, v in rows.items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], records: dict[str, dict[str, Any]],
         runs: list[RunSpec], out: Path) -> list[Path]:
    """Per-domain ratios of the main methods (error bars: std over seeds); ddk weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    main = summary.get("main", {})
    if main:
        labels = list(main)
        domains = list(next(iter(main.values()))["domain_ratio"])
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(labels)
        for i, m in enumerate(labels):
            vals = [main[m]["domain_ratio"][d] for d in domains]
            means = [statistics.mean(v) for v in vals]
            errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.bar([j + i * width for j in range(len(domains))], means, width, yerr=errs,
                   label=m, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(domains))], domains,
                      rotation=30, ha="right")
        ax.set_ylabel("test ppl ratio student/teacher")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "plots" / "domain_ratios.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    ddk = next((r for r in runs if r.group == "main" and r.label == "ddk"), None)
    if ddk is not None and records.get(ddk.key, {}).get("weight_history"):
        hist = records[ddk.key]["weight_history"]
        domains = [d["domain"] for d in records[ddk.key]["test"]]
        fig, ax = plt.subplots(figsize=(8, 4))
        steps = [h["step"] for h in hist]
        for i, d in enumerate(domains):
            ax.step(steps, [h["weights"][i] for h in hist], where="post", label=d)
        ax.set_xlabel("step")
        ax.set_ylabel("domain weight")
        ax.set_title(f"ddk domain weights (seed {ddk.seed})")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(out / "plots" / "ddk_weights.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# -- driver ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from ddk.cache.teacher.model_dir import resolve_teacher_path

    p = PRESETS[args.preset]
    if args.seeds:
        p = replace(p, seeds=tuple(args.seeds))
    if args.steps:
        p = replace(p, steps=args.steps)
    t0 = time.perf_counter()
    out = Path(args.out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    teacher = resolve_teacher_path(args.teacher)
    corpus = Path(args.corpus) if args.corpus else (
        BENCH_CORPUS if BENCH_CORPUS.is_dir() else None)
    if corpus is None:
        from ddk.cache.corpus.demo_corpus import demo_corpus_dir

        corpus = demo_corpus_dir()
    specs = domain_specs(corpus)
    names = [s.name for s in specs]
    from ddk.cache.train.ddk_weights import parse_weights

    skew = (parse_weights(args.skew) if args.skew else
            {d: w for d, w in DEFAULT_SKEW.items() if d in names})
    if not skew:  # a corpus without the default's domains: favour its first two
        skew = {n: 10.0 for n in names[:2]}
    skew = {n: skew.get(n, 1.0) for n in names}

    print(f"[replicate] corpus {corpus} ({len(specs)} domains), teacher {teacher}", flush=True)
    cache = build_cache(p, specs, teacher, out, args.progress)
    natural = natural_mixture(specs, teacher, out)
    student = build_student(p, teacher, cache, skew, out, args.progress)
    test = ((build_test_cache(p, specs, teacher, out, args.progress), 0) if p.held_out_docs
            else (cache, p.val_weight))
    start = _start_ratios(student, cache, test, p)
    groups_run = args.groups or list(p.groups)

    runs = [r for r in plan_runs(p, natural, str(teacher)) if r.group in groups_run]
    caches = {"cache": cache}
    for n in sorted({int(r.cache.split("-")[1]) for r in runs if r.cache != "cache"}):
        caches[f"sampled-{n}"] = build_cache(p, specs, teacher, out, args.progress, samples=n)
    unique: dict[str, RunSpec] = {}
    for r in runs:
        unique.setdefault(r.key, r)
    records: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(unique.values(), 1):
        print(f"[replicate] run {i}/{len(unique)}: {spec.group} {spec.label} seed {spec.seed}",
              flush=True)
        records[spec.key] = run_one(spec, p, caches[spec.cache], test, student, out,
                                    args.progress)

    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        groups.setdefault(r.group, {}).setdefault(r.label, []).append(records[r.key])
    summary = summarise(groups)
    seconds = time.perf_counter() - t0
    report = format_report(summary, start, args.preset, p, seconds,
                           ddk_history=_ddk_history(runs, records))
    plots = plot(summary, records, runs, out)
    result = {"preset": args.preset, "config": asdict(p), "corpus": str(corpus),
              "teacher": str(teacher), "skew": skew, "natural": natural,
              "student_start": start, "test_cache": test[0], "summary": summary, "plots": [str(x) for x in plots],
              "seconds": seconds}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "results.md").write_text(report)
    print(report)
    return result


def _start_ratios(student: Path, cache: str, test: tuple[str, int], p: Preset
                  ) -> list[dict[str, Any]]:
    """The pre-trained student's held-out test ratios: the gaps every method starts from."""
    from ddk.cache.train.student import load_student
    from ddk.cache.train.training_cache import open_cache

    reader = open_cache(cache)
    model, _ = load_student(student, reader)
    import torch

    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate_test(model, test, p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--out", default="replicate-out")
    ap.add_argument("--teacher", default=None,
                    help="teacher model dir (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--corpus", default=None,
                    help="dir of <domain>.jsonl(.gz) (default: bench/data/corpus, else the "
                         "bundled demo corpus)")
    ap.add_argument("--groups", nargs="+", default=None, choices=["main", "ablation", "loss"],
                    help="run groups (default: the preset's; paper: main ablation)")
    ap.add_argument("--seeds", nargs="+", type=int, help="override the preset's main seeds")
    ap.add_argument("--steps", type=int, help="override the preset's steps per run")
    ap.add_argument("--skew", default=None,
                    help="pre-training mix DOMAIN=W,... (unnamed domains 1; default "
                         "python_code=10,bible=10)")
    ap.add_argument("-q", "--quiet", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    from ddk.cache.errors import DDKError
    from ddk.cache.teacher.model_dir import transformers_progress

    try:
        with transformers_progress(args.progress):  # -q: no "Loading weights" bars either
            run(args)
    except DDKError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
