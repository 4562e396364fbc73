"""Full-vocabulary KD with the teacher run online: the baseline the top-k cache approximates.

The cache stores the teacher's top-k log-probs and one tail bucket; this module gives the
trainer the exact target instead (the teacher's whole next-token distribution, recomputed
every step), so an experiment can measure what the cache's compression costs the student.
It is a comparison path, not the fast one: it runs the teacher forward at every micro-batch
and materialises both [N, V] log-softmaxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ddk.cache.errors import ConfigError
from ddk.cache.train.student import load_student

__all__ = ["full_vocab_kd_loss", "load_online_teacher"]


def load_online_teacher(path: str | Path, reader: Any, device: torch.device) -> torch.nn.Module:
    """The cache's own teacher, loaded for online scoring (eval mode, no gradients).

    Refuses any other model: the full-vocabulary run must distil from the same teacher whose
    top-k the cache holds, or the comparison measures a different teacher, not the cache.
    """
    from ddk.cache.teacher.identity import weights_fingerprint

    expected = reader.teacher.get("weights_fingerprint")
    found = weights_fingerprint(Path(path)) if Path(path).is_dir() else None
    if expected is not None and found is not None and found != expected:
        raise ConfigError(
            f"--online-teacher {path} is not the teacher this cache was built with (weights "
            f"fingerprint {found[:12]} vs {expected[:12]}); pass the cache's teacher "
            f"({reader.teacher.get('name')})")
    model, _ = load_student(path, reader, name="online teacher")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def full_vocab_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       labels: torch.Tensor, *, kl_weight: float, ce_weight: float = 1.0,
                       temperature: float = 1.0, ignore_index: int = -100
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kl, ce), means over rows: ce_weight * CE + kl_weight * T^2 * KL(p_T || q_T).

    The same loss and the same returned parts as `sparse_kl_loss(..., return_components=True)`
    with the teacher's full distribution in place of its top-k + tail bucket. Student logits
    wider than the teacher's vocabulary (padded heads) get their extra columns in the student
    softmax, as in the sparse loss. Computed in float32.
    """
    n, v = teacher_logits.shape
    if student_logits.shape[0] != n or student_logits.shape[1] < v:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} do not cover the "
                          f"teacher's {tuple(teacher_logits.shape)}")
    s = student_logits.float()
    log_q = F.log_softmax(s / temperature, dim=-1)[:, :v]
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    active = labels != ignore_index  # as in sparse_kl_loss: ignored rows count in neither term
    kl_rows = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl = (kl_rows * active).sum() / active.sum().clamp(min=1)
    ce = F.cross_entropy(s, labels, ignore_index=ignore_index)
    loss = ce_weight * ce + kl_weight * temperature ** 2 * kl
    return loss, kl.detach(), ce.detach()
