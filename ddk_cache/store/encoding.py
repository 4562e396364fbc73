"""Value encodings and Zarr codec pipelines of the cache arrays.

Log-probs are stored as uint16 codes c = round(-logprob / step) (max abs error step/2);
code 65535 is reserved for -inf (an empty tail when k == vocab). Token ids are stored as
uint16 when the vocabulary fits, else int32. The codec pipelines were chosen by
measurement on real teacher output (docs/codecs.md, bench/bench_cache_codecs.py); every
pipeline ends in a CRC32C checksum so corruption is detected on read by plain zarr. The
`pcodec-remap` profile also stores target ids by frequency rank (id_order.py, format 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, Delta, PCodec, ZstdCodec

NEG_INF_CODE = 65535
_MAX_CODE = NEG_INF_CODE - 1

#: default quantisation step of stored log-probs, in nats (max abs error = step / 2 =
#: 0.0098 <= 0.01). 5 * 2^-8 is just under the 0.02 limit and exact in binary, so
#: -code * step decodes exactly in float32 (docs/codecs.md).
DEFAULT_LOGPROB_STEP = 5.0 / 256.0

#: default codec profile: the smallest stores at blosc-like encode speed (docs/codecs.md).
DEFAULT_CODEC_PROFILE = "pcodec"


@dataclass(frozen=True)
class Encoding:
    """How values are encoded; recorded in the store metadata under "encoding"."""

    id_dtype: str = "uint16"
    logprob_step: float = DEFAULT_LOGPROB_STEP
    codec_profile: str = DEFAULT_CODEC_PROFILE
    #: "encoding.id_order" of a remapped cache (id_order.py); None: target ids stored raw
    id_order: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        order = {} if self.id_order is None else {"id_order": self.id_order}
        return {
            "id_dtype": self.id_dtype,
            "logprob": {"kind": "quantized", "dtype": "uint16", "step": self.logprob_step,
                        "neg_inf_code": NEG_INF_CODE, "decode": "-code * step"},
            "codec_profile": self.codec_profile,
            **order,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Encoding:
        return cls(id_dtype=d["id_dtype"], logprob_step=float(d["logprob"]["step"]),
                   codec_profile=d["codec_profile"], id_order=d.get("id_order"))


def id_dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65536 else "int32"


def quantize_logprobs(logprobs: np.ndarray, step: float) -> np.ndarray:
    """Log-probs (<= 0, or -inf) -> uint16 codes; values below -step*65534 saturate."""
    lp = np.asarray(logprobs, dtype=np.float64)
    codes = np.rint(np.clip(-lp, 0.0, None) / step)
    codes = np.where(np.isneginf(lp), NEG_INF_CODE, np.minimum(codes, _MAX_CODE))
    return codes.astype(np.uint16)


def dequantize_logprobs(codes: np.ndarray, step: float) -> np.ndarray:
    """uint16 codes -> float32 log-probs (NEG_INF_CODE -> -inf)."""
    c = np.asarray(codes)
    out = -(c.astype(np.float32) * np.float32(step))
    out[c == NEG_INF_CODE] = -np.inf
    return out


def _zstd(level: int) -> list[Any]:
    return [ZstdCodec(level=level), Crc32cCodec()]


def codec_pipeline(profile: str, array_name: str, dtype: str) -> dict[str, Any]:
    """`filters` and `compressors` for zarr.create_array for one array of the cache.

    Profiles (compared in docs/codecs.md):
      zstd             plain zstd-3 on the raw little-endian bytes
      zstd-delta       top-k log-prob codes delta-coded along k (they are sorted, so the
                       deltas are small), everything else plain; zstd-9
      blosc-shuffle    blosc(zstd-5) with byte shuffle (groups high and low id bytes)
      pcodec           pcodec level 8 (numcodecs.pcodec; needs the `pcodec` package to
                       write and to read), log-prob codes delta-coded first; the uint8
                       sample counts of a sampled target get zstd-9 (pcodec has no 8-bit)
      pcodec-remap     the pcodec pipelines; the writer stores target ids by frequency rank
                       (id_order.py), which pcodec codes in fewer bits
    """
    delta = [Delta(dtype=dtype)] if array_name == "topk_logprobs" else []
    if profile == "zstd":
        return {"filters": [], "compressors": _zstd(3)}
    if profile == "zstd-delta":
        return {"filters": delta, "compressors": _zstd(9)}
    if profile == "blosc-shuffle":
        return {"filters": delta,
                "compressors": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
                                Crc32cCodec()]}
    if profile in ("pcodec", "pcodec-remap"):
        if dtype == "uint8":  # sample counts: pcodec does not take 8-bit values
            return {"filters": [], "compressors": _zstd(9)}
        return {"filters": delta, "serializer": PCodec(level=8),
                "compressors": [Crc32cCodec()]}
    raise ValueError(f"unknown codec profile {profile!r}; known: {', '.join(CODEC_PROFILES)}")


CODEC_PROFILES = ("zstd", "zstd-delta", "blosc-shuffle", "pcodec", "pcodec-remap")
