#!/usr/bin/env python3
"""Top-k vs sampled teacher target: bytes/token and gradient error against full KD (docs/codecs.md).

The default teacher (SmolLM2-135M-Instruct, fp32) scores the same text as
bench_cache_codecs.py (its first --tokens of the demo corpus, so bytes/token compare with
docs/codecs.md) and its full fp32 logits are kept. A fixed student (by default the teacher
without decoder layers 24 and 26, the paper's regime, `ddk.cache.demo.derive_student`) runs
on the same sequences. Every target is then built by ddk's own code from those logits
(`scores_from_logits` for top-k, `sampled_scores_from_logits` for the sampled target, seeded
per sequence as the cache job seeds it), written by ddk's CacheWriter with the default
codec profile and log-prob step, and read back by CacheReader. Per target:

* bytes/token: bytes of the stored shard objects (chunks, shard index, CRC32C; not
  zarr.json) per input token, with and without input_ids (as bench_cache_codecs.py counts
  them); for sampled, the distinct ids per position (mean, p95);
* gradient error per scored position: the gradient of the real loss
  (`ddk.kernels.sparse_kl_loss`, torch backend, reduction "sum") with respect to the
  student's logits z, from the target as read back, against the full-vocabulary KD
  gradient softmax(z) - p_teacher (d KL(p || softmax z) / dz at T = 1, float64): relative
  L2 error ||g - g_full|| / ||g_full|| (mean, p95) and cosine(g, g_full) (mean, p5: the
  worst 5 %);
* the relative L2 error of the mean gradient over R independent draws (R seeds; the stored
  draw is the first): a sampled target's error falls about as 1/sqrt(R) (it is unbiased),
  a top-k target is deterministic and its error (bias) stays;
* the relative L2 error of the student's LM-head weight gradient over all positions
  (sum_t g_t h_t^T, h_t the head's input): what one optimiser step on this batch sees,
  where independent per-position errors partly average out and a bias does not.

Top-k bucket and renorm read the same store (same bytes); smaller k are the top-64 scores
truncated (bench_cache_codecs.Scores.truncate).

    python bench/bench_targets.py                          # 4096 tokens, 12-16 min, shared 2 cores
    python bench/bench_targets.py --tokens 1024 --repeats 4 # a quicker look
    python bench/bench_targets.py --keep-layers 8           # a far-behind student
    python bench/bench_targets.py --json > targets.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

DEFAULT_KS = (8, 16, 32, 64)
DEFAULT_NS = (8, 16, 32, 64)
BYTES_GOAL = 40.0  # B/token the issue sets for a sampled target
DOMAIN = "bench"
#: bench_cache_codecs.py scores this many extra (pilot) sequences after the measured ones;
#: asked for the same total, the corpus gives the same first sequences
CODEC_BENCH_PILOT = 8
SAMPLED_ARRAYS = ("input_ids", "sample_ids", "sample_counts")


def codec_bench() -> ModuleType:
    """bench/bench_cache_codecs.py as a module (a sibling script, not a package module)."""
    name = "ddk_bench_cache_codecs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("bench_cache_codecs.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


# -- models -----------------------------------------------------------------------------

@torch.inference_mode()
def run_model(path: Path, seqs: np.ndarray, batch_size: int, *, keep_hidden: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 logits [n, L, V] of a causal LM (and the LM head's input [n, L-1, d])."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    head = model.get_output_embeddings()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, a: captured.append(a[0][:, :-1].float()))
    logits, t0 = [], time.perf_counter()
    for b in range(0, len(seqs), batch_size):
        logits.append(model(input_ids=torch.as_tensor(seqs[b:b + batch_size]),
                            use_cache=False).logits.float())
        print(f"  {path.name}: {min(b + batch_size, len(seqs))}/{len(seqs)} sequences "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    hook.remove()
    hidden = torch.cat(captured) if keep_hidden else None
    return torch.cat(logits), hidden


@dataclass
class Forward:
    """Teacher and student on the same n sequences of L tokens (T = L - 1 scored), and the
    full-vocabulary KD gradient they define."""

    input_ids: np.ndarray         # [n, L] int64
    teacher_logits: torch.Tensor  # [n, L, V] float32 (the last position is not scored)
    student_logits: torch.Tensor  # [n, T, V] float32
    student_hidden: torch.Tensor  # [n, T, d] float32, the student's LM-head input
    teacher_seconds: float
    student_seconds: float
    full_grad: torch.Tensor = field(init=False)  # [n, T, V] float32, see full_grad()
    head_norm: float = field(init=False)  # ||sum_t g_full,t h_t^T|| over all positions
    full_norm: float = field(init=False)  # sqrt(sum_t ||g_full,t||^2)

    def __post_init__(self) -> None:
        self.full_grad = torch.stack([full_grad(z, t[:-1]).float() for z, t in
                                      zip(self.student_logits, self.teacher_logits)])
        head = sum(g.T @ h for g, h in zip(self.full_grad, self.student_hidden))
        self.head_norm = float(head.norm())
        self.full_norm = float(self.full_grad.double().square().sum().sqrt())

    @property
    def vocab_size(self) -> int:
        return int(self.teacher_logits.shape[-1])


def run_models(teacher: Path, student: Path, seqs: np.ndarray, batch_size: int) -> Forward:
    t0 = time.perf_counter()
    t_logits, _ = run_model(teacher, seqs, batch_size, keep_hidden=False)
    t1 = time.perf_counter()
    s_logits, hidden = run_model(student, seqs, batch_size, keep_hidden=True)
    if s_logits.shape != t_logits.shape:
        raise SystemExit(f"student logits {tuple(s_logits.shape)} != teacher "
                         f"{tuple(t_logits.shape)}: the student must share the vocabulary")
    return Forward(seqs, t_logits, s_logits[:, :-1].contiguous(), hidden, t1 - t0,
                   time.perf_counter() - t1)


# -- targets as stored ------------------------------------------------------------------

@dataclass
class Stored:
    """One target as read back from its store: sparse ids, log-weights, tail (or None)."""

    ids: torch.Tensor      # [n, T, slots] int64
    logprobs: torch.Tensor  # [n, T, slots] float32 (-inf on sampled padding)
    tail: torch.Tensor | None  # [n, T] float32; None for the sampled target
    bytes: dict[str, int]
    distinct: np.ndarray   # [n, T] ids carrying weight per position


def topk_scores(fw: Forward, k: int) -> Any:
    """bench_cache_codecs.Scores (top-k of the exact fp32 logits) via scores_from_logits."""
    from ddk.cache.teacher.backend import TeacherScores
    from ddk.cache.teacher.topk import scores_from_logits

    ids = torch.as_tensor(fw.input_ids)
    sc = TeacherScores.concat([scores_from_logits(fw.teacher_logits[i:i + 1].clone(),
                                                  ids[i:i + 1], k)
                               for i in range(len(ids))])
    return codec_bench().Scores(fw.input_ids, sc.topk_ids.astype(np.int64), sc.topk_logprobs,
                                sc.tail_logmass, sc.target_logprob, fw.vocab_size,
                                "bench_targets")


def store_topk(scores: Any, root: Path, sps: int) -> Stored:
    from ddk.cache.store.encoding import DEFAULT_CODEC_PROFILE, DEFAULT_LOGPROB_STEP

    d = codec_bench().write_ddk_store(root, scores, DEFAULT_CODEC_PROFILE, DEFAULT_LOGPROB_STEP,
                                      sps)
    if not np.array_equal(d.topk_ids, scores.topk_ids):
        raise AssertionError("top-k ids did not round-trip")
    k = scores.topk_ids.shape[-1]
    return Stored(torch.from_numpy(d.topk_ids), torch.from_numpy(d.topk_logprobs),
                  torch.from_numpy(d.tail), d.bytes, np.full(scores.tail.shape, k))


def sample_seeds(n: int, seed: int) -> tuple[int, ...]:
    """The cache job's generator seeds for sequences 0..n-1 of the bench's train split."""
    from ddk.cache.teacher.sampled import sequence_seed

    return tuple(sequence_seed(seed, DOMAIN, "train", i) for i in range(n))


def draw(fw: Forward, rows: slice, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sample_ids, sample_counts of sequences `rows` (the cache job's code and seeding)."""
    from ddk.cache.teacher.sampled import SampleSpec
    from ddk.cache.teacher.topk import sampled_scores_from_logits

    seeds = sample_seeds(len(fw.input_ids), seed)[rows]
    sc = sampled_scores_from_logits(fw.teacher_logits[rows], torch.as_tensor(
        fw.input_ids[rows]), SampleSpec(draws, seeds))
    return sc.sample_ids, sc.sample_counts


def store_sampled(fw: Forward, draws: int, seed: int, root: Path, sps: int) -> Stored:
    """Write the sampled target with CacheWriter (format 2 metadata) and read it back."""
    from ddk.cache.store.encoding import (
        DEFAULT_CODEC_PROFILE,
        DEFAULT_LOGPROB_STEP,
        Encoding,
        id_dtype_for_vocab,
    )
    from ddk.cache.store.layout import FORMAT_VERSION
    from ddk.cache.teacher.backend import TeacherScores

    enc = Encoding(id_dtype=id_dtype_for_vocab(fw.vocab_size),
                   logprob_step=DEFAULT_LOGPROB_STEP, codec_profile=DEFAULT_CODEC_PROFILE)
    written = []

    def scores_of(a: int, b: int) -> TeacherScores:
        ids, cnt = draw(fw, slice(a, b), draws, seed)
        written.append(ids)
        return TeacherScores(None, None, None, np.zeros((b - a, fw.input_ids.shape[1] - 1),
                                                        np.float32), ids, cnt)

    batch = codec_bench().write_bench_store(
        root, fw.input_ids, fw.vocab_size, enc, sps, scores_of, domain=DOMAIN,
        format_version=FORMAT_VERSION, created_by="bench_targets", k=draws,
        target={"kind": "sampled", "draws": draws, "temperature": 1.0})
    if not np.array_equal(batch.topk_ids.numpy(), np.concatenate(written)):
        raise AssertionError("sampled ids did not round-trip")
    data = codec_bench().data_bytes
    return Stored(batch.topk_ids, batch.topk_logprobs, None,
                  {a: data(root / DOMAIN / "train" / a) for a in SAMPLED_ARRAYS},
                  torch.isfinite(batch.topk_logprobs).sum(-1).numpy())


# -- gradients --------------------------------------------------------------------------

def loss_grad(z: torch.Tensor, ids: torch.Tensor, lp: torch.Tensor, tail_lp: torch.Tensor | None,
              tail: str) -> torch.Tensor:
    """d(sum of per-row KL) / dz through ddk's loss (torch backend) for one sequence."""
    from ddk.kernels import sparse_kl_loss

    z = z.detach().clone().requires_grad_(True)
    sparse_kl_loss(z, ids, lp, tail_lp, tail=tail, reduction="sum", backend="torch").backward()
    return z.grad


def full_grad(z: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """softmax(z) - softmax(teacher), float64: the full-vocabulary KD gradient at T = 1."""
    return torch.softmax(z.double(), -1) - torch.softmax(teacher_logits.double(), -1)


def errors(g: torch.Tensor, gf: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-row relative L2 error and cosine of g against gf."""
    gf = gf.to(g.dtype)
    nf = gf.norm(dim=-1)
    rel = (g - gf).norm(dim=-1) / nf
    cos = (g * gf).sum(-1) / (g.norm(dim=-1) * nf)
    return rel.numpy(), cos.numpy()


# -- rows -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    kind: str  # "topk" or "sampled"
    size: int  # k, or N draws
    tail: str  # "bucket" / "renorm" (top-k); "none" (sampled: the draws are the target)

    @property
    def name(self) -> str:
        return f"top-{self.size} {self.tail}" if self.kind == "topk" else f"sampled N={self.size}"


@dataclass
class Row:
    target: str
    kind: str
    size: int
    tail: str
    bytes: dict[str, int]
    tokens: int
    distinct_mean: float
    distinct_p95: float
    rel_mean: float
    rel_p95: float
    cos_mean: float
    cos_p5: float
    head_rel: float
    #: R -> mean over positions of the relative L2 error of the mean gradient of R draws
    rel_mean_over_r: dict[int, float] = field(default_factory=dict)
    #: R -> pooled relative L2 error sqrt(sum_t ||g_t - g_full,t||^2 / sum_t ||g_full,t||^2)
    #: of that mean: its square falls exactly as 1/R for an unbiased target
    pooled_over_r: dict[int, float] = field(default_factory=dict)

    @property
    def per_token(self) -> float:
        return sum(self.bytes.values()) / self.tokens

    @property
    def per_token_no_input(self) -> float:
        return (sum(self.bytes.values()) - self.bytes["input_ids"]) / self.tokens


def r_checkpoints(repeats: int) -> list[int]:
    """1, 2, 4, ... up to repeats (and repeats itself)."""
    out = [1 << i for i in range(repeats.bit_length()) if 1 << i <= repeats]
    return out + ([repeats] if out[-1] != repeats else [])


def measure(fw: Forward, t: Target, st: Stored, *, repeats: int, seed: int) -> Row:
    """The gradient errors of one stored target over every sequence (see the module doc)."""
    rels, coss, head_diff, sq_diff = [], [], 0.0, 0.0
    for i in range(len(fw.input_ids)):
        z = fw.student_logits[i]
        g = loss_grad(z, st.ids[i], st.logprobs[i], None if st.tail is None else st.tail[i],
                      t.tail)
        rel, cos = errors(g, fw.full_grad[i])
        rels.append(rel)
        coss.append(cos)
        head_diff = head_diff + (g - fw.full_grad[i]).T @ fw.student_hidden[i]
        sq_diff += float((g - fw.full_grad[i]).double().square().sum())
    rel, cos = np.concatenate(rels), np.concatenate(coss)
    if t.kind == "sampled":
        over_r, pooled_r = mean_over_r(fw, st, t.size, repeats, seed)
    else:
        over_r, pooled_r = {1: float(rel.mean())}, {1: math.sqrt(sq_diff) / fw.full_norm}
    return Row(t.name, t.kind, t.size, t.tail, st.bytes, int(fw.input_ids.size),
               float(st.distinct.mean()), float(np.percentile(st.distinct, 95)),
               float(rel.mean()), float(np.percentile(rel, 95)), float(cos.mean()),
               float(np.percentile(cos, 5)), float(head_diff.norm()) / fw.head_norm, over_r,
               pooled_r)


def mean_over_r(fw: Forward, st: Stored, draws: int, repeats: int, seed: int
                ) -> tuple[dict[int, float], dict[int, float]]:
    """R -> mean and pooled relative L2 error of the mean gradient of R draws (the stored
    one first; Row.rel_mean_over_r, Row.pooled_over_r).

    The gradient of a sampled target q is softmax(z) - q (the loss's, checked by the test),
    so the mean gradient's error is p - mean(q). The R - 1 further draws come straight from
    torch.multinomial over the teacher's full distribution, one generator per sequence.
    """
    from ddk.cache.teacher.sampled import sequence_seed

    at = r_checkpoints(repeats)
    out: dict[int, list[np.ndarray]] = {r: [] for r in at}
    sq = dict.fromkeys(at, 0.0)
    for i in range(len(fw.input_ids)):
        p = torch.softmax(fw.teacher_logits[i, :-1], -1)
        nf = fw.full_grad[i].norm(dim=-1)
        q = torch.zeros_like(p).scatter_add_(1, st.ids[i], st.logprobs[i].exp())
        gen = torch.Generator().manual_seed(sequence_seed(seed, DOMAIN, f"repeats-{draws}", i))
        more = torch.multinomial(p, (repeats - 1) * draws, replacement=True, generator=gen)
        more = more.view(len(p), repeats - 1, draws)
        for r in range(1, repeats + 1):
            if r > 1:
                q.scatter_add_(1, more[:, r - 2], torch.full(more[:, r - 2].shape, 1 / draws))
            if r in out:
                diff = (p - q / r).norm(dim=-1)
                out[r].append((diff / nf).numpy())
                sq[r] += float(diff.double().square().sum())
    return ({r: float(np.concatenate(v).mean()) for r, v in out.items()},
            {r: math.sqrt(v) / fw.full_norm for r, v in sq.items()})


def run_targets(fw: Forward, tmp: Path, *, ks: Sequence[int] = DEFAULT_KS,
                ns: Sequence[int] = DEFAULT_NS, repeats: int = 16, seed: int = 0,
                sequences_per_shard: int = 16) -> list[Row]:
    """Every target: store it, read it back, measure it (the bench's core)."""
    rows = []
    if ks:
        top = topk_scores(fw, max(ks))
        for k in sorted(ks):
            st = store_topk(top.truncate(k), tmp / f"top-{k}", sequences_per_shard)
            for tail in ("bucket", "renorm"):
                rows.append(measure(fw, Target("topk", k, tail), st, repeats=1, seed=seed))
                _progress(rows[-1])
    for n in sorted(ns):
        st = store_sampled(fw, n, seed, tmp / f"sampled-{n}", sequences_per_shard)
        rows.append(measure(fw, Target("sampled", n, "none"), st, repeats=repeats, seed=seed))
        _progress(rows[-1])
    return rows


def _progress(r: Row) -> None:
    print(f"  {r.target}: {r.per_token:.1f} B/token, rel L2 mean {r.rel_mean:.3f}",
          file=sys.stderr)


# -- report -----------------------------------------------------------------------------

def table(rows: list[Row], repeats: int) -> str:
    head = ("| target | B/token | B/token w/o input_ids | distinct ids/pos mean (p95) | "
            "rel L2 mean | rel L2 p95 | cos mean | cos p5 | "
            f"rel L2 of mean over R={repeats} | LM-head grad rel L2 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        over_r = r.rel_mean_over_r.get(repeats, r.rel_mean)
        lines.append(
            f"| {r.target} | **{r.per_token:.1f}** | {r.per_token_no_input:.1f} | "
            f"{r.distinct_mean:.1f} ({r.distinct_p95:.0f}) | **{r.rel_mean:.3f}** | "
            f"{r.rel_p95:.3f} | {r.cos_mean:.3f} | {r.cos_p5:.3f} | {over_r:.3f} | "
            f"{r.head_rel:.3f} |")
    return "\n".join(lines)


def r_table(rows: list[Row]) -> str:
    """Mean and pooled error of the mean gradient over R draws; the top-64 bucket for
    reference (deterministic: the same at every R)."""
    sampled = [r for r in rows if r.kind == "sampled"]
    if not sampled:
        return ""
    rs = sorted(sampled[0].rel_mean_over_r)
    ref = [r for r in rows if r.target == "top-64 bucket"]
    lines = ["| target | error | " + " | ".join(f"R={r}" for r in rs) + " |",
             "|" + "---|" * (len(rs) + 2)]
    for r in sampled + ref:
        for label, v in (("rel L2 mean", r.rel_mean_over_r), ("pooled", r.pooled_over_r)):
            lines.append(f"| {r.target} | {label} | "
                         + " | ".join(f"{v.get(x, v[1]):.3f}" for x in rs) + " |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> list[str]:
    ref = next((r for r in rows if r.target == "top-64 bucket"), None)
    if ref is None:
        return []
    out = []
    for r in (r for r in rows if r.kind == "sampled"):
        fits = r.per_token <= BYTES_GOAL
        per_pos = r.rel_mean <= ref.rel_mean and r.cos_mean >= ref.cos_mean
        out.append(f"- {r.target}: {r.per_token:.1f} B/token "
                   f"({'<=' if fits else '>'} {BYTES_GOAL:.0f}); per-position error "
                   f"{'no worse than' if per_pos else 'worse than'} top-64 bucket "
                   f"(rel L2 {r.rel_mean:.3f} vs {ref.rel_mean:.3f}, cos {r.cos_mean:.3f} vs "
                   f"{ref.cos_mean:.3f}); LM-head gradient {r.head_rel:.3f} vs "
                   f"{ref.head_rel:.3f}; goal {'met' if fits and per_pos else 'not met'}")
    return out


def report(args: argparse.Namespace, argv: Sequence[str], fw: Forward, rows: list[Row],
           student: str, seconds: float) -> str:
    n, L = fw.input_ids.shape
    lines = [
        (f"Teacher: {args.teacher or 'embedded default (SmolLM2-135M-Instruct)'}, fp32, CPU; "
         f"student: {student}; text: {args.source}."),
        (f"Measured: {n} sequences x {L} tokens = {n * L} tokens ({n * (L - 1)} scored "
         f"positions); codec profile and log-prob step: ddk's defaults; sampled seed "
         f"{args.seed}, R = {args.repeats} draws for the mean-over-R column."),
        (f"Date {datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores, "
         f"{platform.machine()}, Python {platform.python_version()}; teacher "
         f"{fw.teacher_seconds:.0f}s, student {fw.student_seconds:.0f}s, whole run "
         f"{seconds:.0f}s."),
        "Command: python bench/bench_targets.py " + " ".join(argv),
        "",
        table(rows, args.repeats),
    ]
    rt = r_table(rows)
    if rt:
        lines += ["", ("Error of the mean gradient of R independent draws: rel L2 mean over "
                       "positions, and pooled = sqrt(sum_t ||g_t - g_full,t||^2 / sum_t "
                       "||g_full,t||^2), whose square falls as 1/R without bias:"), "", rt]
    v = verdict(rows)
    if v:
        lines += ["", (f"Goal (<= {BYTES_GOAL:.0f} B/token, per-position gradient error no "
                       "worse than top-64 bucket):"), "", *v]
    return "\n".join(lines)


# -- driver -----------------------------------------------------------------------------

def student_path(args: argparse.Namespace, teacher: Path, tmp: Path) -> tuple[Path, str]:
    from ddk.cache.demo import derive_student

    if args.student:
        return Path(args.student), args.student
    if args.keep_layers:
        return (derive_student(teacher, tmp / "student", keep_layers=args.keep_layers),
                f"the teacher with {args.keep_layers} evenly spaced decoder layers kept")
    drop = tuple(args.drop_layers)
    return (derive_student(teacher, tmp / "student", drop_layers=drop),
            f"the teacher without decoder layers {', '.join(map(str, drop))}")


def sequences(teacher: Path, args: argparse.Namespace) -> np.ndarray:
    from transformers import AutoTokenizer

    n = math.ceil(args.tokens / args.seq_len)
    tok = AutoTokenizer.from_pretrained(teacher)
    seqs, args.source = codec_bench().corpus_sequences(tok, args.seq_len,
                                                       n + CODEC_BENCH_PILOT, args.corpus)
    return seqs[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096,
                   help="input tokens measured (rounded up to whole sequences)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--k", type=int, nargs="*", default=list(DEFAULT_KS), help="top-k sizes")
    p.add_argument("--samples", type=int, nargs="*", default=list(DEFAULT_NS),
                   help="draws per position of the sampled targets")
    p.add_argument("--repeats", type=int, default=16,
                   help="R: independent draws averaged for the mean-over-R column")
    p.add_argument("--seed", type=int, default=0, help="the cache job's --seed for the draws")
    p.add_argument("--teacher", help="teacher model directory (default: the embedded one)")
    p.add_argument("--student", help="student model directory sharing the teacher's vocab")
    p.add_argument("--drop-layers", type=int, nargs="*", default=[24, 26],
                   help="without --student: the teacher minus these decoder layers")
    p.add_argument("--keep-layers", type=int,
                   help="without --student: keep this many evenly spaced layers instead")
    p.add_argument("--corpus", choices=("auto", "demo", "stdlib"), default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sequences-per-shard", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print the results as JSON instead")
    p.add_argument("--out", help="also write the markdown report to this file")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.repeats < 1 or any(x < 1 for x in args.k + args.samples):
        p.error("--repeats, --k and --samples must be >= 1")

    from ddk.cache.teacher.model_dir import resolve_teacher_path

    t0 = time.perf_counter()
    teacher = resolve_teacher_path(args.teacher)
    with tempfile.TemporaryDirectory(prefix="ddk-targets-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        student, label = student_path(args, teacher, tmp)
        fw = run_models(teacher, student, sequences(teacher, args), args.batch_size)
        rows = run_targets(fw, tmp, ks=args.k, ns=args.samples, repeats=args.repeats,
                           seed=args.seed, sequences_per_shard=args.sequences_per_shard)
    seconds = time.perf_counter() - t0
    text = report(args, argv, fw, rows, label, seconds)
    if args.json:
        print(json.dumps({"command": "python bench/bench_targets.py " + " ".join(argv),
                          "student": label, "source": args.source,
                          "sequences": int(fw.input_ids.shape[0]), "seq_len": args.seq_len,
                          "seconds": seconds, "rows": [
                              {**asdict(r), "per_token": r.per_token,
                               "per_token_no_input": r.per_token_no_input} for r in rows]},
                         indent=1))
    else:
        print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
