"""What defines one training run: `TrainConfig`, its checks, and the options a resume must keep.

Kept free of torch so the CLI can take its option defaults from here without slowing
`ddk --help`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ddk.cache.errors import ConfigError

METHODS = ("ddk", "kd", "cpt")
MIXTURES = ("natural", "uniform")
TAILS = ("bucket", "renorm")


@dataclass
class TrainConfig:
    """Everything a run needs; defaults follow the DDK paper where it gives one."""

    cache: str
    student: str
    out: str
    method: str = "ddk"               # ddk | kd | cpt
    mixture: str = "natural"          # fixed mixture for kd / cpt: natural | uniform
    domain_weights: dict[str, float] | None = None  # explicit fixed mixture (overrides mixture)
    alpha: float = 0.5                # DDK smoothing between discrepancy and uniform
    interval: int = 1000              # steps between re-weightings / validation
    gamma: float = 0.2                # KL weight (ddk, kd)
    temperature: float = 1.0          # distillation temperature
    kd_tail: str = "bucket"           # bucket: top-k + tail bucket; renorm: top-k renormalised
    kd_topk: int | None = None        # distil from the first k of the cached top-k (None: all)
    online_teacher: str | None = None  # full-vocabulary KD: run this teacher every step
    fused_lm_head: bool | None = None  # loss from hidden states, no full logits; None: auto
    fsdp: bool = False                # shard the student with FSDP2 across torchrun ranks
    val_sequences: int = 500          # validation sequences per domain for ppl
    batch_size: int = 8               # sequences per micro-batch per rank
    grad_accum: int = 1               # micro-batches per optimizer step
    max_steps: int | None = None      # optimizer steps; or
    max_tokens: int | None = None     # a token budget (default: one pass over the train tokens)
    lr: float = 3e-5                  # peak LR after warm-up
    min_lr: float = 3e-6              # LR at the end of the cosine
    warmup: int | None = None         # warm-up steps (default 1% of max_steps, >= 1)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0     # max global grad norm; None = off
    seed: int = 0
    bf16: bool | None = None          # autocast bf16; None = on iff CUDA supports it
    checkpoint_every: int = 500       # steps; 0 = only on signals
    keep_checkpoints: int = 2
    resume: bool = False
    eval_batch_size: int | None = None  # default: batch_size
    prefetch: int = 8                 # micro-batches read ahead by the loader thread
    device: str | None = None         # default: cuda if available else cpu
    tensorboard: bool = False
    progress: bool = True
    deterministic: bool = False       # torch.use_deterministic_algorithms (GPU reproducibility)

    def tokens_per_step(self, world: int, seq_len: int) -> int:
        """Tokens one optimizer step trains on, over all `world` ranks."""
        return self.batch_size * self.grad_accum * world * seq_len

    def check_cache_target(self, k: int, kind: str = "topk") -> None:
        """ConfigError if the KD options do not fit the cache's target: --kd-topk beyond
        its k, or options that shape a top-k target used with a sampled one (whose batches
        carry a tail of -inf, so the loss's "bucket" mode is exactly its target as given)."""
        if kind == "sampled":
            if self.kd_topk is not None or self.kd_tail != "bucket":
                raise ConfigError("--kd-topk and --kd-tail shape a top-k target; this cache "
                                  "holds a sampled target (draws, no ranking, no tail): "
                                  "drop them")
            if self.temperature != 1.0 and self.method != "cpt":
                raise ConfigError(f"a sampled target is an unbiased estimate of the teacher "
                                  f"at temperature 1; --temperature {self.temperature} would "
                                  "bias it: use --temperature 1, or a top-k cache")
            return
        if self.kd_topk is not None and self.kd_topk > k:
            raise ConfigError(f"--kd-topk {self.kd_topk} exceeds the cache's k = {k}; "
                              f"pass --kd-topk <= {k} or rebuild the cache with a larger k")

    def validate(self) -> None:
        """ConfigError for options that are out of range or contradict each other."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)
        need(self.method in METHODS, f"--method must be one of {METHODS}, got {self.method!r}")
        need(self.mixture in MIXTURES, f"--kd-mixture must be one of {MIXTURES}, "
             f"got {self.mixture!r}")
        need(self.domain_weights is None or self.method != "ddk",
             "explicit --kd-mixture weights are a fixed mixture for --method kd or cpt; "
             "ddk sets its own weights: drop them or pick --method kd")
        need(self.kd_tail in TAILS, f"--kd-tail must be one of {TAILS}, got {self.kd_tail!r}")
        need(self.kd_topk is None or self.kd_topk >= 1, f"--kd-topk must be >= 1, "
             f"got {self.kd_topk}")
        need(self.online_teacher is None or (self.kd_topk is None and self.kd_tail == "bucket"),
             "--online-teacher distils from the teacher's full distribution; drop --kd-topk "
             "and --kd-tail, which shape the cached top-k target")
        need(self.online_teacher is None or self.method != "cpt",
             "--method cpt has no KL term, so --online-teacher would be unused; drop it or "
             "pick --method kd / ddk")
        need(0.0 <= self.alpha <= 1.0, f"--alpha must be in [0, 1], got {self.alpha}")
        for name in ("interval", "val_sequences", "batch_size", "grad_accum", "keep_checkpoints",
                     "prefetch"):
            need(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, "
                 f"got {getattr(self, name)}")
        need(self.max_steps is None or self.max_tokens is None,
             "give either --max-steps or --max-tokens, not both")
        need(self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1")
        need(self.max_tokens is None or self.max_tokens >= 1, "--max-tokens must be >= 1")
        need(self.gamma >= 0, f"--gamma must be >= 0, got {self.gamma}")
        need(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        need(self.lr > 0 and 0 <= self.min_lr <= self.lr,
             f"need 0 <= --min-lr <= --lr and --lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        need(self.warmup is None or self.warmup >= 0, "--warmup must be >= 0")
        need(self.weight_decay >= 0, "--weight-decay must be >= 0")
        need(self.grad_clip is None or self.grad_clip > 0, "--grad-clip must be > 0")
        need(self.checkpoint_every >= 0, "--checkpoint-every must be >= 0")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1,
             "--eval-batch-size must be >= 1")


#: fields that change the sequence stream or the maths: a resume must not change them.
RESUME_KEYS = ("method", "mixture", "domain_weights", "kd_tail", "kd_topk", "online_teacher",
                "alpha", "interval", "gamma", "temperature",
                "val_sequences", "batch_size", "grad_accum", "lr", "min_lr", "weight_decay",
                "grad_clip", "seed", "max_steps", "warmup", "world_size",
                "fsdp")  # a sharded checkpoint (torch.distributed.checkpoint) is another format


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """TrainConfig from a dict, ignoring keys that are not fields (e.g. a resolved config)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})
