"""`ddk inspect-cache --verify N`: re-run the teacher on stored sequences and measure the error.

The teacher (transformers backend) scores N finished validation sequences again, in
fp32 by default, and each stored value is compared with the exact one: the log-probs of
the stored top-k ids, the top-k id sets, the tail log-mass, KL(exact || stored) over the
top-k + tail buckets, and the teacher loss. Quantisation alone bounds the log-prob and
tail errors by step / 2, so larger errors mean the cache does not hold what this teacher
computes (another model, another dtype or device, or a damaged store).

The teacher is the one recorded in the cache metadata unless another directory is given;
when its fingerprints differ from the recorded ones the result carries a warning, since
the errors then measure a different model rather than the cache.

A sampled cache is verified by drawing again: the same seed on the re-run teacher must give
the stored draws (the share of positions whose draws are identical), and the exact teacher
mass of the distinct drawn ids is reported, with the teacher loss.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ddk.cache.errors import IncompleteCacheError, TeacherError
from ddk.cache.store.encoding import NEG_INF_CODE, dequantize_logprobs
from ddk.cache.store.integrity import IntegrityReport
from ddk.cache.store.layout import split_arrays
from ddk.cache.store.reader import CacheReader, read_rows
from ddk.cache.store.selection import finished_sequences, spread
from ddk.cache.teacher.identity import teacher_identity
from ddk.cache.teacher.sampled import SampleSpec, sequence_seed
from ddk.cache.teacher.topk import sampled_scores_from_logits, scores_from_logits
from tqdm.auto import tqdm

#: two top-k id sets whose difference lies within this many nats of the exact k-th
#: log-prob count as agreeing (near-ties reorder under different batch shapes/devices).
TIE_TOLERANCE = 1e-3
#: positions per float64 log-softmax block (bounds memory: block x vocab x 8 B).
_VERIFY_BLOCK = 128


def pick_verify_sequences(reader: CacheReader, n: int,
                          integrity: IntegrityReport | None = None) -> list[tuple[str, int]]:
    """n finished validation sequences spread over the domains: round-robin over domains,
    evenly spaced within each (deterministic); damaged shards (per `integrity`) left out."""
    done = {d: finished_sequences(reader, d, "validation", integrity)[0]
            for d in reader.domains}
    counts = dict.fromkeys(done, 0)
    remaining = n
    while remaining > 0:
        progressed = False
        for d, indices in done.items():
            if remaining > 0 and counts[d] < indices.size:
                counts[d] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return [(d, int(i)) for d in done for i in spread(done[d], counts[d])]


def _resolve_verify_teacher(reader: CacheReader, teacher: str | None) -> Path:
    """The teacher directory to re-run: `teacher` if given, else the recorded path."""
    recorded = reader.teacher.get("path")
    path = Path(teacher).expanduser() if teacher is not None else (
        Path(recorded) if recorded else None)
    if path is None or not (path / "config.json").is_file():
        where = "given with --teacher" if teacher is not None else "recorded in the cache"
        raise TeacherError(f"cannot verify: the teacher {where} ({path}) is not a local "
                           "transformers model directory; pass --teacher with the directory "
                           "of the teacher that built this cache")
    return path


def _identity_warnings(reader: CacheReader, path: Path) -> list[str]:
    """One warning per fingerprint of the teacher at `path` that differs from the cache's."""
    now, stored = teacher_identity(path), reader.teacher
    return [f"teacher {field} of {path} ({str(now.get(field))[:12]}) differs from the one "
            f"recorded in the cache ({str(stored.get(field))[:12]}): the errors below then "
            "measure a different model, not the cache"
            for field in ("weights_fingerprint", "config_hash")
            if stored.get(field) is not None and now.get(field) != stored.get(field)]


def _read_stored(reader: CacheReader, domain: str, index: int, step: float
                 ) -> dict[str, np.ndarray]:
    """One stored validation sequence, log-probs decoded to float32."""
    idx = np.array([index], dtype=np.int64)
    out = {name: read_rows(reader.array(domain, "validation", name), idx)[0]
           for name in split_arrays("validation")}
    out["topk_ids"] = reader.decode_ids(out["topk_ids"])  # a remapped cache stores ranks
    for name in ("topk_logprobs", "tail_logmass"):
        out[name] = dequantize_logprobs(out[name], step)
    return out


def _exact_at_stored_ids(logits: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact log-prob of each stored id [T, k] and exact log-mass outside them [T].

    In float64, _VERIFY_BLOCK positions at a time to bound memory on large vocabularies.
    """
    a_parts, b_parts = [], []
    for start in range(0, ids.shape[0], _VERIFY_BLOCK):
        block = slice(start, start + _VERIFY_BLOCK)
        logp = torch.log_softmax(logits[0, :-1][block].double(), dim=-1)  # [t, V]
        a_parts.append(torch.gather(logp, -1, ids[block]).cpu())
        b_parts.append(torch.logsumexp(logp.scatter_(-1, ids[block], float("-inf")), -1).cpu())
        del logp
    return torch.cat(a_parts).numpy(), torch.cat(b_parts).numpy()


def _compare(stored: dict[str, np.ndarray], logits: Any, input_ids: Any, k: int,
             step: float) -> dict[str, np.ndarray]:
    """Per-position error measures of one sequence: stored values vs the exact teacher."""
    ids = torch.as_tensor(stored["topk_ids"].astype(np.int64), device=logits.device)
    a_exact, b_exact = _exact_at_stored_ids(logits, ids)
    exact = scores_from_logits(logits, input_ids, k)  # same maths as the cache job (consumes)
    a_st = stored["topk_logprobs"].astype(np.float64)
    b_st = stored["tail_logmass"].astype(np.float64)

    lp_err = np.abs(a_st - a_exact)
    same = np.all(np.sort(stored["topk_ids"], -1) == np.sort(exact.topk_ids[0], -1), axis=-1)
    kth = exact.topk_logprobs[0][:, -1].astype(np.float64)
    near_tie = a_exact.min(axis=-1) >= kth - TIE_TOLERANCE

    floor = -step * (NEG_INF_CODE - 1)  # quantisation saturates below this
    tail_exact = exact.tail_logmass[0].astype(np.float64)
    in_range = tail_exact > floor
    both_inf = np.isneginf(tail_exact) & np.isneginf(b_st)
    tail_err = np.where(both_inf, 0.0, np.abs(b_st - tail_exact))

    # KL(exact || stored) over the k + 1 buckets (stored ids + tail); the stored buckets
    # are renormalised so the KL is a proper divergence (>= 0).
    p_log = np.concatenate([a_exact, b_exact[:, None]], axis=-1)
    q_log = np.concatenate([a_st, b_st[:, None]], axis=-1)
    q_log = q_log - np.logaddexp.reduce(q_log, axis=-1, keepdims=True)
    p = np.exp(p_log)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (p_log - q_log), 0.0)
    return {"lp_err": lp_err.ravel(), "ids_same": same, "ids_agree": same | near_tie,
            "tail_err": tail_err[in_range], "tail_out_of_range": np.array([(~in_range).sum()]),
            "kl": terms.sum(axis=-1),
            "target_stored": stored["target_logprob"].astype(np.float64),
            "target_exact": exact.target_logprob[0].astype(np.float64)}


def _verify_sequence(model: Any, reader: CacheReader, domain: str, index: int,
                     step: float) -> dict[str, np.ndarray]:
    """Re-run the teacher on one stored validation sequence and compare (see _compare)."""
    stored = _read_stored(reader, domain, index, step)
    ids = torch.as_tensor(stored["input_ids"].astype(np.int64))[None].to(model.device)
    with torch.inference_mode():
        logits = model.model(input_ids=ids, use_cache=False).logits.float()
        return _compare(stored, logits, ids, reader.k, step)


def _verify_sampled_sequence(model: Any, reader: CacheReader, domain: str, index: int
                             ) -> dict[str, np.ndarray]:
    """Re-draw one stored validation sequence of a sampled cache from the re-run teacher
    (same seed): per position, whether the draws are identical, and the exact teacher
    mass of the distinct drawn ids; the next-token log-probs as for top-k."""
    idx = np.array([index], dtype=np.int64)
    stored = {name: read_rows(reader.array(domain, "validation", name), idx)[0]
              for name in split_arrays("validation", "sampled")}
    stored["sample_ids"] = reader.decode_ids(stored["sample_ids"])
    ids = torch.as_tensor(stored["input_ids"].astype(np.int64))[None].to(model.device)
    seed = sequence_seed(int(reader.meta["split"]["seed"]), domain, "validation", index)
    draws = int(reader.sample_draws or 0)
    with torch.inference_mode():
        logits = model.model(input_ids=ids, use_cache=False).logits.float()
        exact = sampled_scores_from_logits(logits, ids, SampleSpec(draws, (seed,)))
        drawn = torch.as_tensor(stored["sample_ids"].astype(np.int64), device=logits.device)
        real = torch.as_tensor(stored["sample_counts"] > 0, device=logits.device)
        logp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
        mass = torch.where(real, torch.gather(logp, -1, drawn).exp(), 0.0).sum(-1)
    same = np.all((stored["sample_ids"] == exact.sample_ids[0])
                  & (stored["sample_counts"] == exact.sample_counts[0]), axis=-1)
    return {"draws_same": same, "drawn_mass": mass.cpu().numpy(),
            "target_stored": stored["target_logprob"].astype(np.float64),
            "target_exact": exact.target_logprob[0].astype(np.float64)}


def _teacher_loss_summary(t_st: np.ndarray, t_ex: np.ndarray) -> dict[str, float]:
    return {"stored": float(-t_st.mean()), "exact": float(-t_ex.mean()),
            "difference": float(-t_st.mean() + t_ex.mean()),
            "target_logprob_max_abs_error": float(np.abs(t_st - t_ex).max())}


def _sampled_summary(parts: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The verify figures of a sampled cache, over every compared position."""
    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    mass = cat("drawn_mass")
    return {"target": "sampled", "draws_identical": float(cat("draws_same").mean()),
            "drawn_teacher_mass": {"mean": float(mass.mean()),
                                   "p5": float(np.percentile(mass, 5))},
            "teacher_loss": _teacher_loss_summary(cat("target_stored"), cat("target_exact"))}


def _error_summary(parts: list[dict[str, np.ndarray]], step: float) -> dict[str, Any]:
    """The error figures of the report, over every compared position."""
    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in parts])

    lp_err, kl, tail_err = cat("lp_err"), cat("kl"), cat("tail_err")
    t_st, t_ex = cat("target_stored"), cat("target_exact")
    return {
        "quantization_bound": step / 2,
        "topk_logprob_abs_error": {"max": float(lp_err.max()), "mean": float(lp_err.mean())},
        "topk_id_agreement": float(cat("ids_agree").mean()),
        "topk_id_exact_match": float(cat("ids_same").mean()),
        "tie_tolerance": TIE_TOLERANCE,
        "tail_logmass_abs_error": {"max": float(tail_err.max()) if tail_err.size else None,
                                   "positions_below_range": int(cat("tail_out_of_range").sum())},
        "kl_exact_vs_stored": {"mean": float(kl.mean()), "max": float(kl.max())},
        "teacher_loss": _teacher_loss_summary(t_st, t_ex),
    }


def verify_cache(reader: CacheReader, n: int, *, teacher: str | None = None,
                 progress: bool = False, device: str = "auto", dtype: str = "fp32",
                 integrity: IntegrityReport | None = None) -> dict[str, Any]:
    """Re-run the teacher (transformers backend) on n stored validation sequences and
    measure how far the stored values are from the exact ones.

    Returns max/mean abs error of the stored top-k log-probs (vs the exact log-probs of
    the same ids), top-k id agreement (exact, and ignoring near-ties within
    TIE_TOLERANCE nats), max abs error of the tail log-mass, KL(exact || stored) over the
    top-k + tail buckets per position, and the teacher-loss difference. Quantisation alone
    bounds the log-prob and tail errors by step / 2. Shards `integrity` found damaged are
    not used.
    """
    # imported here so that a report without --verify never loads transformers
    from ddk.cache.teacher.transformers_backend import TransformersTeacher

    picks = pick_verify_sequences(reader, n, integrity)
    if not picks:
        raise IncompleteCacheError(f"cannot verify {reader.path}: no validation shard is "
                                   "finished yet; re-run `ddk cache-teacher` to fill it")
    path = _resolve_verify_teacher(reader, teacher)
    warnings = _identity_warnings(reader, path)
    t0 = time.perf_counter()
    model = TransformersTeacher(path, dtype=dtype, device=device, progress=progress)
    if model.vocab_size < reader.vocab_size:
        raise TeacherError(f"teacher at {path} has {model.vocab_size} output rows but the "
                           f"cache holds ids up to {reader.vocab_size}; pass --teacher with "
                           "the teacher that built this cache")
    step = reader.encoding.logprob_step
    sampled = reader.target_kind == "sampled"
    try:
        parts = [_verify_sampled_sequence(model, reader, domain, index) if sampled
                 else _verify_sequence(model, reader, domain, index, step) for domain, index
                 in tqdm(picks, desc="verify", unit="seq", disable=not progress)]
    finally:
        model.close()
    return {
        "requested": n, "sequences": len(picks),
        "per_domain": {d: sum(1 for dd, _ in picks if dd == d) for d in reader.domains},
        "positions": int(sum(p["target_exact"].size for p in parts)),
        "teacher_path": str(path), "device": str(model.device), "dtype": dtype,
        "warnings": warnings,
        **(_sampled_summary(parts) if sampled else _error_summary(parts, step)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
