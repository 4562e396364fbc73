"""DDK in a training loop of your own: the dataset, the sampler and the loss, one screen.

    python docs/examples/own_loop.py --cache ddk-cache --student STUDENT_DIR --steps 200

The three pieces, each usable on its own:
  dataset  CacheReader (open_cache): any sequences of a domain with their cached teacher
           top-k ids, log-probs and tail mass, read by index.
  sampler  DomainMixture: which sequences come next, by domain weight; every `interval`
           steps it asks for a per-domain measurement and sets DDK's next weights.
  loss     sparse_kl_loss: CE + gamma * KL(teacher || student) over the cached top-k plus a
           tail bucket (Triton on CUDA, PyTorch elsewhere); fused_linear_sparse_kl_loss takes
           hidden states and the head weight instead of logits.
No distributed launch here: docs/trainer.md shows what the Trainer integration adds.
"""

from __future__ import annotations

import argparse

import torch
from ddk.cache.train.config import TrainConfig
from ddk.cache.train.evaluate import evaluate_domains
from ddk.cache.train.mixture import DomainMixture, MixtureState
from ddk.cache.train.student import check_student
from ddk.cache.train.training_cache import open_cache
from ddk.kernels import sparse_kl_loss
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--interval", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    a = p.parse_args(argv)

    reader = open_cache(a.cache)                                        # the dataset
    model = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32).train()
    check_student(model.config, AutoTokenizer.from_pretrained(a.student), reader)
    cfg = TrainConfig(cache=a.cache, student=a.student, out="", method="ddk",
                      interval=a.interval, batch_size=a.batch_size, val_sequences=20)
    mixture = DomainMixture(cfg, reader, MixtureState(), rank=0, pin_memory=False)  # sampler
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)

    def reweight(step: int) -> None:  # DDK: measure each domain, then the next weights
        ppl = evaluate_domains(model, reader, max_sequences=cfg.val_sequences)
        rec = mixture.start_interval(step, ppl, a.steps)
        print(f"step {step}: weights", dict(zip(reader.domains,
                                                 (round(w, 3) for w in rec["weights"]))))

    loader = None
    for step in range(a.steps):
        loader = mixture.loader_for(step, loader, reweight)
        batch = next(loader)  # input_ids [B, L]; topk_ids, topk_logprobs [B, L-1, k]; tail
        ids, k = batch.input_ids, batch.topk_ids.shape[-1]
        logits = model(input_ids=ids[:, :-1]).logits.flatten(0, 1)      # row j predicts j+1
        loss = sparse_kl_loss(logits, batch.topk_ids.view(-1, k),       # the loss
                              batch.topk_logprobs.view(-1, k), batch.tail_logmass.view(-1),
                              ids[:, 1:].reshape(-1), kl_weight=cfg.gamma, ce_weight=1.0,
                              inplace_grad=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}")
    loader.close()


if __name__ == "__main__":
    main()
