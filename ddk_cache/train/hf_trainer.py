"""DDK inside transformers' `Trainer`: `DDKTrainer`, for the stack most people distil with.

    trainer = DDKTrainer(model=student, args=TrainingArguments(...), cache="path-or-url",
                         method="ddk", interval=1000, alpha=0.5, gamma=0.2)
    trainer.train()            # or train(resume_from_checkpoint=True)
    trainer.save_model()       # a plain save_pretrained directory

trains `student` from a teacher cache as `ddk train-student` does, while the `Trainer` owns
everything else: optimizer and LR schedule, the accelerate / torchrun launch, DDP, FSDP,
DeepSpeed, mixed precision, checkpoints, loggers and `save_model`. It is a thin shell over the
pieces `ddk train-student` uses, not a second copy of them:

  data     `CachedTargetStream`, the train dataloader: this rank's micro-batches, drawn by the
           `DomainMixture` (mixture.py) that train-student's fit drives. At each interval's
           first step it measures the student per domain (evaluate.py; all-reduced across
           ranks, so every rank sets the same weights) and sets the next weights
           (ddk_weights.py). Each rank draws its own stream (sampler seeded by (seed, rank)),
           so the dataloader is not handed to accelerate to shard.
  loss     step.micro_loss: CE + gamma * KL over the cached top-k, or the same from the hidden
           states with the fused LM head (lm_head.py: the loss runs inside the model's own
           forward, where DDP and FSDP2 expect it and FSDP2 has unsharded the head weight).
  state    ddk_state.pt in each checkpoint-N folder: the mixture (weights, history, current
           interval) and every rank's sampler snapshot, written before the Trainer's own
           files. `train(resume_from_checkpoint=...)` restores it and the stream replays its
           interval up to the checkpoint, so a resumed run draws what an uninterrupted one
           would have. The Trainer's own batch skipping is therefore turned off
           (args.ignore_data_skip = True).
  logging  ddk/weight/<domain>, ddk/ppl_student/<domain>, ddk/ppl_teacher/<domain> and
           ddk/ratio/<domain> at each interval, and ce / kl next to each loss, through
           `Trainer.log`: whatever `report_to` enables (TensorBoard, W&B, ...) records them.
           `evaluate()` without an eval_dataset returns the per-domain perplexities.

One epoch is one pass over the cache's training tokens at this run's batch size (as the
default budget of `ddk train-student`), so `num_train_epochs` means the same thing here;
`max_steps` overrides it as usual. DeepSpeed ZeRO-3 partitions the head weight so that it is
whole only inside the head's own forward: the fused path is then off, with a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ddk.cache.errors import ConfigError
from ddk.cache.train.config import RESUME_KEYS, TrainConfig
from ddk.cache.train.distributed import Dist, gather
from ddk.cache.train.evaluate import DomainPerplexity, evaluate_domains
from ddk.cache.train.lm_head import install_fused_forward, use_fused_head
from ddk.cache.train.mixture import DomainMixture, MixtureState
from ddk.cache.train.sampler import PrefetchLoader, SampledBatch
from ddk.cache.train.state import check_resume_options
from ddk.cache.train.step import micro_loss, steps_for_tokens
from ddk.cache.train.student import check_student
from ddk.cache.train.training_cache import open_cache
from transformers import Trainer, TrainingArguments

__all__ = ["DDK_STATE_NAME", "CachedTargetStream", "DDKTrainer", "last_complete_checkpoint"]

log = logging.getLogger(__name__)

#: the file DDKTrainer adds to each checkpoint-N folder
DDK_STATE_NAME = "ddk_state.pt"

#: the run-defining options DDKTrainer owns (the Trainer checks its own arguments)
_RESUME_KEYS = tuple(k for k in RESUME_KEYS if k not in (
    "lr", "min_lr", "weight_decay", "grad_clip", "max_steps", "warmup", "online_teacher",
    "fsdp"))

_ZERO3 = ("DeepSpeed ZeRO-3 partitions the LM head weight, which is whole only inside the "
          "head's own forward")

_BATCH_KEYS = ("input_ids", "topk_ids", "topk_logprobs", "tail_logmass", "domains")


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N folder holding both the Trainer's and DDK's state, or None."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folders = sorted((int(p.name.rpartition("-")[2]), p)
                     for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                     if p.is_dir() and p.name.rpartition("-")[2].isdigit())
    complete = [(step, p) for step, p in folders
                if (p / TRAINER_STATE_NAME).is_file() and (p / DDK_STATE_NAME).is_file()]
    if not complete:
        return None
    newest_step, newest = complete[-1]
    skipped = [p.name for step, p in folders if step > newest_step]
    if skipped:
        log.warning("DDKTrainer: skipping incomplete checkpoint(s) %s; resuming from %s",
                    ", ".join(skipped), newest.name)
    return str(newest)


class CachedTargetStream:
    """The train dataloader of a DDKTrainer: this rank's micro-batches with their targets.

    Yields dicts of CPU tensors (input_ids [B, L], topk_ids / topk_logprobs [B, L-1, k],
    tail_logmass [B, L-1], domains [B]). Its length is one epoch; iterating it again goes on
    with the same stream. At the first micro-batch of every optimizer step it asks the mixture
    whether an interval starts and, if so, has the trainer measure and re-weight first.
    """

    def __init__(self, trainer: DDKTrainer, mixture: DomainMixture, per_epoch: int) -> None:
        self.trainer, self.mixture, self.per_epoch = trainer, mixture, per_epoch
        self.grad_accum = mixture.cfg.grad_accum
        self._loader: PrefetchLoader | None = None
        self._micro = 0

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.per_epoch):
            yield self._next()

    def _next(self) -> dict[str, torch.Tensor]:
        if self._micro == 0:  # the first micro-batch of an optimizer step
            self._loader = self.mixture.loader_for(self.trainer.state.global_step, self._loader,
                                                   self.trainer.start_interval)
        batch = next(self._loader)
        self._micro = (self._micro + 1) % self.grad_accum
        return {k: getattr(batch, k) for k in _BATCH_KEYS}

    def close(self) -> None:
        """Stop the loader's threads (the trainer calls this when train() returns)."""
        if self._loader is not None:
            self._loader.close()
            self._loader = None


class DDKTrainer(Trainer):
    """`transformers.Trainer` that distils `model` from a ddk teacher cache (module doc).

    Args beyond the Trainer's: `cache` (path or fsspec URL of a complete cache) and the
    distillation options of `ddk train-student`, with its defaults: method (ddk | kd | cpt),
    mixture / domain_weights (the fixed mixture of kd and cpt), alpha, interval (optimizer
    steps between re-weightings), gamma, temperature, kd_tail, kd_topk, val_sequences,
    eval_batch_size, fused_lm_head (None: on where the head is a plain linear map) and
    prefetch. Batch size, accumulation, seed, precision and everything else come from `args`.
    Pass the student's tokenizer as `processing_class` so it is checked against the cache's
    and saved with the model. `train_dataset` and `data_collator` are not taken: the cache is
    the data.
    """

    def __init__(self, model: torch.nn.Module, args: TrainingArguments, cache: str | Path, *,
                 method: str = TrainConfig.method, mixture: str = TrainConfig.mixture,
                 domain_weights: dict[str, float] | None = TrainConfig.domain_weights,
                 alpha: float = TrainConfig.alpha, interval: int = TrainConfig.interval,
                 gamma: float = TrainConfig.gamma, temperature: float = TrainConfig.temperature,
                 kd_tail: str = TrainConfig.kd_tail, kd_topk: int | None = TrainConfig.kd_topk,
                 val_sequences: int = TrainConfig.val_sequences,
                 eval_batch_size: int | None = TrainConfig.eval_batch_size,
                 fused_lm_head: bool | None = TrainConfig.fused_lm_head,
                 prefetch: int = TrainConfig.prefetch, **trainer_kwargs: Any) -> None:
        for name in ("train_dataset", "data_collator"):
            if trainer_kwargs.get(name) is not None:
                raise ConfigError(f"DDKTrainer draws its training data from the cache; drop "
                                  f"{name}= (an eval_dataset is fine)")
        if trainer_kwargs.get("model_init") is not None:
            raise ConfigError("DDKTrainer checks the student against the cache before "
                              "training: pass the model itself as model=, not model_init=")
        self.ddk_config = TrainConfig(
            cache=str(cache), student=str(getattr(model, "name_or_path", "") or "<in memory>"),
            out=args.output_dir, method=method, mixture=mixture, domain_weights=domain_weights,
            alpha=alpha, interval=interval, gamma=gamma, temperature=temperature,
            kd_tail=kd_tail, kd_topk=kd_topk, fused_lm_head=fused_lm_head,
            val_sequences=val_sequences, batch_size=args.per_device_train_batch_size,
            grad_accum=args.gradient_accumulation_steps, seed=args.seed,
            eval_batch_size=eval_batch_size, prefetch=prefetch, progress=not args.disable_tqdm)
        self.ddk_config.validate()
        self.reader = open_cache(cache)
        self._check_against_cache(model, trainer_kwargs.get("processing_class"))
        super().__init__(model=model, args=args, **trainer_kwargs)
        self.model_accepts_loss_kwargs = False  # micro_loss is a per-micro-batch mean:
        self.loss_is_scaled_for_ga = False      # the Trainer divides it by the accumulation
        if not args.ignore_data_skip:
            log.info("DDKTrainer: setting args.ignore_data_skip = True; the DDK stream "
                     "restores its own position on resume")
            args.ignore_data_skip = True
        self.ddk_fused = use_fused_head(fused_lm_head, model, say=args.process_index == 0,
                                        blocker=_ZERO3 if self._zero3() else None)
        if self.ddk_fused:
            install_fused_forward(model)
        self._amp = (torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None)
        self._resume: dict[str, Any] | None = None
        self._stream: CachedTargetStream | None = None
        self._logged: torch.Tensor | None = None  # (ce, kl, micro-batches) since the last log

    def _check_against_cache(self, model: torch.nn.Module, tokenizer: Any) -> None:
        """The student and --kd-topk checks of ddk train-student."""
        if tokenizer is None:
            log.warning("DDKTrainer: no processing_class given, so the student's tokenizer "
                        "cannot be checked against the cache's; pass processing_class=tokenizer")
        check_student(model.config, tokenizer, self.reader)
        self.ddk_config.check_cache_target(self.reader.k, self.reader.target_kind)

    def _zero3(self) -> bool:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return self.is_deepspeed_enabled and getattr(plugin, "zero_stage", None) == 3

    @property
    def ddk_dist(self) -> Dist:
        return Dist(self.args.process_index, self.args.world_size, self.args.device, False)

    # -- data ---------------------------------------------------------------------------
    def get_train_dataloader(self) -> CachedTargetStream:
        cfg, reader = self.ddk_config, self.reader
        state = MixtureState()
        if self._resume is not None:
            state = MixtureState(**self._resume["mixture"],
                                 snapshot=self._resume["samplers"][self.args.process_index])
        mixture = DomainMixture(cfg, reader, state, rank=self.args.process_index,
                                pin_memory=self.args.device.type == "cuda")
        steps_per_epoch = steps_for_tokens(  # one pass over the training tokens
            sum(reader.num_tokens(d, "train") for d in reader.domains),
            cfg.tokens_per_step(self.args.world_size, reader.seq_len))
        if self._stream is not None:
            self._stream.close()
        self._stream = CachedTargetStream(self, mixture, steps_per_epoch * cfg.grad_accum)
        return self._stream

    @property
    def ddk_mixture(self) -> DomainMixture | None:
        """The domain mixture of the current (or last) train() call."""
        return None if self._stream is None else self._stream.mixture

    def start_interval(self, step: int) -> None:
        """Measure every domain and set the weights for the next interval (the stream calls
        this at the interval's first step); logged through Trainer.log."""
        ppl = self.evaluate_domains()
        rec = self.ddk_mixture.start_interval(step, ppl, self.state.max_steps)
        if rec.get("saturation", {}).get("saturated") and self.is_world_process_zero():
            log.warning("step %d: %s", step, rec["saturation"]["message"])
        logs: dict[str, float] = {}
        for p, w in zip(ppl, rec["weights"], strict=True):
            logs[f"ddk/weight/{p.domain}"] = w
            logs[f"ddk/ppl_student/{p.domain}"] = p.student_ppl
            logs[f"ddk/ppl_teacher/{p.domain}"] = p.teacher_ppl
            logs[f"ddk/ratio/{p.domain}"] = p.ratio
        self.log(logs)

    def evaluate_domains(self) -> list[DomainPerplexity]:
        """Per-domain student vs teacher perplexity on the cached validation split."""
        cfg = self.ddk_config
        return evaluate_domains(self.model, self.reader, max_sequences=cfg.val_sequences,
                                batch_size=cfg.eval_batch_size or cfg.batch_size,
                                device=self.args.device, autocast_dtype=self._amp)

    # -- loss and logging ---------------------------------------------------------------
    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        if "topk_ids" not in inputs:  # an eval_dataset of the user's: the model's own loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch = SampledBatch(*(inputs[k] for k in _BATCH_KEYS))
        loss, ce, kl = micro_loss(model, batch, self.ddk_config, self.args.device, self._amp,
                                  fused=self.ddk_fused)
        part = torch.stack([ce.detach().double(), kl.detach().double(),  # on the device: no
                            torch.ones((), dtype=torch.float64, device=ce.device)])  # sync
        self._logged = part if self._logged is None else self._logged + part
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer.log, with the mean ce and kl since the last loss log next to `loss`."""
        if "loss" in logs and self._logged is not None:
            sums = self._logged
            if self.args.world_size > 1:  # every rank logs the loss at the same step
                sums = self.accelerator.reduce(sums, reduction="sum")
            sums = sums.cpu()
            logs["ce"], logs["kl"] = float(sums[0] / sums[2]), float(sums[1] / sums[2])
            self._logged = None
        super().log(logs, start_time)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Per-domain perplexity on the cache's validation split, unless an eval_dataset is
        given (then the Trainer's own evaluation, with the model's own loss)."""
        if eval_dataset is not None or self.eval_dataset is not None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics: dict[str, float] = {}
        for p in self.evaluate_domains():
            metrics[f"{metric_key_prefix}_{p.domain}_ppl"] = p.student_ppl
            metrics[f"{metric_key_prefix}_{p.domain}_ratio"] = p.ratio
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics

    # -- checkpoints --------------------------------------------------------------------
    def _resume_config(self) -> dict[str, Any]:
        return {**{k: getattr(self.ddk_config, k) for k in _RESUME_KEYS if k != "world_size"},
                "world_size": self.args.world_size}

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """ddk_state.pt first (collective: every rank's sampler), then the Trainer's files."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(self._get_output_dir(trial=trial),
                      f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        m = self.ddk_mixture.state
        samplers = gather(m.snapshot, self.ddk_dist)
        if self.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            state = {"step": self.state.global_step, "config": self._resume_config(),
                     "mixture": {"weights": m.weights, "history": m.history,
                                 "interval_start": m.interval_start,
                                 "interval_len": m.interval_len},
                     "samplers": samplers}
            tmp = folder / f".{DDK_STATE_NAME}.tmp"
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / DDK_STATE_NAME)
        super()._save_checkpoint(model, trial)

    def _load_ddk_state(self, checkpoint: str) -> dict[str, Any]:
        path = Path(checkpoint) / DDK_STATE_NAME
        if not path.exists():
            raise ConfigError(f"checkpoint {checkpoint} has no {DDK_STATE_NAME}: it was not "
                              "written by DDKTrainer, or its save was interrupted; resume from "
                              "an earlier checkpoint-N folder")
        state = torch.load(path, map_location="cpu", weights_only=False)
        check_resume_options(state["config"], self._resume_config(), checkpoint, _RESUME_KEYS)
        return state

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """Trainer.train, with the DDK state of `resume_from_checkpoint` restored first.

        `resume_from_checkpoint=True` takes the newest *complete* checkpoint-N folder of
        args.output_dir (one with its trainer_state.json and ddk_state.pt), so a run killed
        while saving resumes from the checkpoint before instead of a half-written one.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ConfigError(f"no complete checkpoint-N folder in {self.args.output_dir} "
                                  "to resume from; train without resume_from_checkpoint")
        self._resume = (self._load_ddk_state(resume_from_checkpoint)
                        if resume_from_checkpoint else None)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint or None,
                                 **kwargs)
        finally:
            if self._stream is not None:
                self._stream.close()
