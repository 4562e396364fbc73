"""DDK from your own transformers `Trainer` script: the cache is the data, the Trainer the rest.

    python docs/examples/ddk_trainer.py --cache ddk-cache --student STUDENT_DIR --out run
    torchrun --nproc-per-node 8 docs/examples/ddk_trainer.py --cache ... --bf16   # DDP
    torchrun --nproc-per-node 8 docs/examples/ddk_trainer.py --cache ... --bf16 --fsdp

STUDENT_DIR is any local transformers causal LM sharing the teacher's tokenizer (for example
the `student/` that `ddk demo` derives, or your own pretrained small model). The model ends in
OUT/model as a plain save_pretrained directory. docs/trainer.md explains every piece.
"""

from __future__ import annotations

import argparse

import torch
from ddk.cache.train.hf_trainer import DDKTrainer
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--method", default="ddk", choices=["ddk", "kd", "cpt"])
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--interval", type=int, default=200, help="steps between re-weightings")
    p.add_argument("--val-sequences", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--save-steps", type=int, default=500)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA)")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 over the decoder layers "
                   "(accelerate enables it with 2 or more GPU processes)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    a = p.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(a.student)
    fsdp = {}
    if a.fsdp:
        fsdp = {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"fsdp_version": 2,
                                "transformer_layer_cls_to_wrap": list(model._no_split_modules)}}
    args = TrainingArguments(
        output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum, learning_rate=a.lr,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": a.lr / 10},
        warmup_steps=max(1, a.max_steps // 100), bf16=a.bf16, logging_steps=10,
        save_strategy="steps", save_steps=a.save_steps, save_total_limit=2, report_to=[],
        use_cpu=a.cpu, **fsdp)
    trainer = DDKTrainer(model=model, args=args, cache=a.cache, processing_class=tokenizer,
                         method=a.method, interval=a.interval, val_sequences=a.val_sequences)
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    trainer.save_model(f"{a.out}/model")
    if trainer.is_world_process_zero():
        for p_ in trainer.evaluate_domains():
            print(f"{p_.domain:>16}  student ppl {p_.student_ppl:10.2f}  "
                  f"teacher ppl {p_.teacher_ppl:10.2f}  ratio {p_.ratio:6.2f}")


if __name__ == "__main__":
    main()
