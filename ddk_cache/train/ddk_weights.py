"""DDK domain-weight maths (Liu et al., "DDK: Distilling Domain Knowledge for Efficient LLMs",
arXiv 2407.16154), plus the fixed mixtures that the kd / cpt baselines use.

Per domain i the discrepancy is the perplexity ratio ppl_S[i] / ppl_T[i] (student over teacher,
both measured on the domain's validation split). DDK samples more from domains where the
student lags the teacher most:

    r_0         = softmax(ppl_S / ppl_T)
    psi[i]      = r_t[i] * exp(ppl_S[i] / ppl_T[i])
    r_{t+1}[i]  = alpha * psi[i] / sum(psi) + (1 - alpha) / N

The update is computed in log space (log psi = log r + ratio, normalised with logsumexp), which
is the same formula but cannot overflow when a random student is thousands of times worse than
its teacher. All maths is float64 on CPU; weights are plain tensors of shape [N].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from ddk.cache.errors import ConfigError

__all__ = ["discrepancy", "explicit_weights", "fixed_weights", "initial_weights", "parse_weights",
           "psi_share", "update_weights"]


def _vec(x: Sequence[float] | torch.Tensor, name: str, *, allow_zero: bool = False
         ) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().cpu().reshape(-1)
    if t.numel() == 0:
        raise ConfigError(f"{name} is empty: DDK needs at least one domain")
    bad = (t < 0).any() or (t.sum() <= 0) if allow_zero else (t <= 0).any()
    if not torch.isfinite(t).all() or bad:
        need = "finite, >= 0 and not all 0" if allow_zero else "finite and positive"
        raise ConfigError(f"{name} must be {need}, got {t.tolist()}")
    return t


def discrepancy(ppl_student: Sequence[float] | torch.Tensor,
                ppl_teacher: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Per-domain ratio ppl_S / ppl_T (float64 [N]); > 1 means the student lags the teacher."""
    s, t = _vec(ppl_student, "ppl_student"), _vec(ppl_teacher, "ppl_teacher")
    if s.shape != t.shape:
        raise ConfigError(f"got {s.numel()} student and {t.numel()} teacher perplexities")
    return s / t


def initial_weights(ppl_student: Sequence[float] | torch.Tensor,
                    ppl_teacher: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """r_0 = softmax(ppl_S / ppl_T) over domains."""
    return torch.softmax(discrepancy(ppl_student, ppl_teacher), dim=0)


def update_weights(weights: Sequence[float] | torch.Tensor,
                   ppl_student: Sequence[float] | torch.Tensor,
                   ppl_teacher: Sequence[float] | torch.Tensor,
                   alpha: float = 0.5) -> torch.Tensor:
    """One DDK step: r' = alpha * psi / sum(psi) + (1 - alpha) / N, psi = r * exp(ppl_S/ppl_T).

    alpha in [0, 1] trades the discrepancy-driven mixture against uniform smoothing, which
    keeps every domain's weight >= (1 - alpha) / N so no domain is ever starved.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    # a weight can underflow to exactly 0 (softmax of ratios far apart): psi = 0, log psi = -inf
    r = _vec(weights, "weights", allow_zero=True)
    ratio = discrepancy(ppl_student, ppl_teacher)
    if r.shape != ratio.shape:
        raise ConfigError(f"got {r.numel()} weights for {ratio.numel()} domains")
    return alpha * psi_share(r, ratio) + (1.0 - alpha) / r.numel()


def psi_share(weights: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """psi / sum(psi) with psi = weights * exp(ratio): the discrepancy-driven part of an update,
    in log space (float64 [N] tensors in, float64 out)."""
    log_psi = torch.log(weights) + ratio
    return torch.exp(log_psi - torch.logsumexp(log_psi, dim=0))


def fixed_weights(kind: str, token_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """A fixed mixture for the kd / cpt baselines.

    "natural": proportional to each domain's training tokens (what concatenating the corpus
    and shuffling would give); "uniform": 1/N each.
    """
    counts = torch.as_tensor(token_counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0:
        raise ConfigError("no domains to mix")
    if kind == "uniform":
        return torch.full_like(counts, 1.0 / counts.numel())
    if kind == "natural":
        if (counts < 0).any() or counts.sum() <= 0:
            raise ConfigError(f"natural mixture needs positive token counts, got {counts.tolist()}")
        return counts / counts.sum()
    raise ConfigError(f"unknown mixture {kind!r}: use 'natural' or 'uniform'")


def explicit_weights(weights: Mapping[str, float], domains: Sequence[str]) -> torch.Tensor:
    """A fixed mixture given by name ({domain: weight}), normalised; unnamed domains get 0.

    Used for mixtures that are neither natural nor uniform: a skewed pre-training mix, or the
    natural proportions of a corpus larger than the cached sample of it.
    """
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise ConfigError(f"domain weights name unknown domain(s) {unknown}; the cache has "
                          f"{list(domains)}")
    w = torch.tensor([float(weights.get(d, 0.0)) for d in domains], dtype=torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"domain weights must be finite, >= 0 and not all 0, got {dict(weights)}")
    return w / w.sum()


def parse_weights(text: str) -> dict[str, float]:
    """'a=2,b=1' -> {'a': 2.0, 'b': 1.0} (the CLI's --kd-mixture with explicit weights)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"cannot read domain weight {part!r}: write DOMAIN=WEIGHT, "
                              "comma-separated, e.g. python_code=4,bible=1") from None
    if not out:
        raise ConfigError("empty domain weights: write DOMAIN=WEIGHT, comma-separated")
    return out
