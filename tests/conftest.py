"""Shared fixtures: tiny random teachers/students built on the fly (no hub, no network).

Models are saved with save_pretrained into a tmp dir and loaded back through ddk's real
code paths. Head size is 32 so the same models also run under vLLM on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "In the beginning God created the heaven and the earth.",
    "SELECT name FROM users WHERE id = 1;",
    "What is 12 plus 30? Answer: 42",
    "To be, or not to be, that is the question.",
    "double sin(double x) { return x; }",
    "Permission is hereby granted, free of charge, to any person.",
]


def build_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained in-process; covers any UTF-8 text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_TRAINING_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def save_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden: int = 64,
    max_positions: int = 512,
    vocab_pad: int = 0,
) -> Path:
    """Save a random LlamaForCausalLM + tokenizer to `path` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer) + vocab_pad,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        head_dim=32,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so top-k is not flat
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A tiny random teacher (2 layers, hidden 64, vocab ~320, max 512 positions)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-teacher"), seed=0)


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory) -> Path:
    """A tiny random student sharing the teacher's tokenizer (1 layer)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-student"), seed=1, num_layers=1)


def load_repo_script(relpath: str) -> ModuleType:
    """Import a repository file that is not a package module (bench/, scripts/).

    --import-mode=importlib gives tests no sibling or repo-root imports; the module is
    registered in sys.modules because dataclasses look their module up while it executes.
    """
    path = REPO / relpath
    name = "ddk_repo_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_domain(root: Path, name: str, docs: list[str]) -> Path:
    """Write `docs` as a JSONL domain directory and return it."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
    return d


@pytest.fixture
def small_corpus(tmp_path) -> dict[str, Path]:
    """Three small domains with distinct styles (enough text for a few dozen sequences)."""
    root = tmp_path / "corpus"
    code = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(120)]
    prose = [f"Chapter {i}. The quick brown fox jumps over the lazy dog {i} times." for i in range(120)]
    math = [f"What is {i} plus {2 * i}? Answer: {3 * i}" for i in range(120)]
    return {
        "code": write_domain(root, "code", code),
        "prose": write_domain(root, "prose", prose),
        "math": write_domain(root, "math", math),
    }


@pytest.fixture(scope="session")
def repo_script():
    """load_repo_script as a fixture, for test files (they cannot import conftest)."""
    return load_repo_script


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory, tiny_teacher_dir) -> Path:
    """A small real teacher cache for the trainer / evaluate / CLI tests, built once
    (by tests/support/train_cache.py)."""
    from support.train_cache import build_cache

    return build_cache(tmp_path_factory.getbasetemp() / "ddk-train", tiny_teacher_dir)


@pytest.fixture(scope="session")
def sampled_train_cache(tmp_path_factory, tiny_teacher_dir) -> Path:
    """The train_cache corpus with a sampled teacher target (8 draws per position)."""
    from support.train_cache import build_cache

    return build_cache(tmp_path_factory.getbasetemp() / "ddk-train", tiny_teacher_dir,
                       name="sampled-cache", target="sampled", samples=8)
