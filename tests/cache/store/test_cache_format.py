"""docs/cache-format.md is a true spec: its plain-zarr reader reproduces CacheReader.

The reader example is taken verbatim from the markdown and executed with every import of
a `ddk` module refused, against small caches built by run_cache_job from the tiny teacher.
The store's layout, metadata keys and checksums are checked against what the spec says.
"""

from __future__ import annotations

import builtins
import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.run import run_cache_job
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.store.encoding import CODEC_PROFILES
from ddk.cache.store.reader import CacheReader

DOC = Path(__file__).resolve().parents[3] / "docs" / "cache-format.md"
EXAMPLE_MARKER = "# ddk cache reader, format versions 1 and 2"
SEQ_LEN, K, PER_SHARD, N_VAL, N_TRAIN = 24, 8, 3, 2, 5


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def reader_example() -> str:
    """The one ```python block of the spec that starts with EXAMPLE_MARKER."""
    blocks = re.findall(r"```python\n(.*?)```", doc_text(), flags=re.DOTALL)
    found = [b for b in blocks if b.startswith(EXAMPLE_MARKER)]
    assert len(found) == 1, f"expected one reader example in {DOC}, found {len(found)}"
    return found[0]


def _no_ddk_import(name: str, *args: Any, **kwargs: Any) -> Any:
    if name == "ddk" or name.startswith("ddk."):
        raise ImportError(f"the plain-zarr example must not import {name}")
    return builtins.__import__(name, *args, **kwargs)


def run_example(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """exec the example in `workdir` (it reads ./ddk-cache) with ddk imports refused."""
    monkeypatch.chdir(workdir)
    guarded = dict(vars(builtins), __import__=_no_ddk_import)
    ns: dict[str, Any] = {"__builtins__": guarded, "__name__": "cache_format_example"}
    exec(compile(reader_example(), str(DOC), "exec"), ns)  # noqa: S102 (the point of the test)
    return ns


def build(workdir: Path, corpus: dict[str, Path], teacher: Path, **kw: Any) -> Path:
    out = workdir / "ddk-cache"
    cfg = CacheJobConfig(output=str(out), teacher=str(teacher),
                         domains=[DomainSpec(n, str(corpus[n])) for n in ("code", "math")],
                         seq_len=SEQ_LEN, val_sequences=N_VAL, max_train_sequences=N_TRAIN,
                         sequences_per_shard=PER_SHARD, batch_size=8, progress=False,
                         **{"k": K, **kw})
    assert run_cache_job(cfg).complete
    return out


def assert_example_reads_like_cache_reader(ns: dict[str, Any], reader: CacheReader) -> None:
    """The example's read_sequences and teacher_loss equal CacheReader's, bitwise, per split."""
    for domain in reader.domains:
        for split, n in (("train", N_TRAIN), ("validation", N_VAL)):
            mine = ns["read_sequences"]("ddk-cache", domain, split, 1, n)
            ref = reader.read(domain, split, range(1, n))
            for name in ("input_ids", "topk_ids", "topk_logprobs", "tail_logmass"):
                assert mine[name].dtype == getattr(ref, name).numpy().dtype, name
                np.testing.assert_array_equal(mine[name], getattr(ref, name).numpy(),
                                              err_msg=f"{domain}/{split}/{name}")
        assert ns["teacher_loss"]("ddk-cache", domain) == reader.teacher_loss(domain)


STEPS = (1 / 64, 1 / 50, 1 / 128, 5 / 256)
CASES = [(profile, STEPS[i % len(STEPS)], False) for i, profile in enumerate(CODEC_PROFILES)]
CASES.append(("blosc-shuffle", 1 / 64, True))  # k = vocabulary: the tail is the -inf code


@pytest.mark.parametrize("profile,step,full_vocab", CASES)
def test_plain_zarr_example_matches_cache_reader(tmp_path, monkeypatch, small_corpus,
                                                 tiny_teacher_dir, profile, step, full_vocab):
    vocab = json.loads((tiny_teacher_dir / "config.json").read_text())["vocab_size"]
    path = build(tmp_path, small_corpus, tiny_teacher_dir, codec_profile=profile,
                 logprob_step=step, **({"k": vocab} if full_vocab else {}))
    ns = run_example(tmp_path, monkeypatch)
    reader = CacheReader.open(path)
    assert ns["meta"]["encoding"]["codec_profile"] == profile
    # pcodec-remap: format 2, and the example decodes the stored ranks (checked below)
    assert ("id_order" in ns["meta"]["encoding"]) == (profile == "pcodec-remap")
    assert ns["meta"]["format_version"] == (2 if profile == "pcodec-remap" else 1)
    if full_vocab:
        codes = zarr.open_group(str(path), mode="r")["code/train/tail_logmass"][:]
        assert np.all(codes == ns["meta"]["encoding"]["logprob"]["neg_inf_code"])
        assert np.all(np.isneginf(ns["batch"]["tail_logmass"]))
    assert_example_reads_like_cache_reader(ns, reader)
    # the example's own checks: top-k + tail is a distribution up to quantisation error
    assert float(np.abs(np.log(ns["total"])).max()) <= step / 2 + 1e-4
    assert ns["targets"].shape == (2, SEQ_LEN - 1)


@pytest.mark.parametrize("profile", ["pcodec", "pcodec-remap"])
def test_plain_zarr_example_reads_a_sampled_cache(tmp_path, monkeypatch, small_corpus,
                                                   tiny_teacher_dir, profile):
    path = build(tmp_path, small_corpus, tiny_teacher_dir, target="sampled", samples=6,
                 codec_profile=profile)
    ns = run_example(tmp_path, monkeypatch)
    reader = CacheReader.open(path)
    assert ns["meta"]["format_version"] == 2
    assert_example_reads_like_cache_reader(ns, reader)
    assert ns["batch"]["topk_ids"].shape == (2, SEQ_LEN - 1, 6)
    assert float(np.abs(np.log(ns["total"])).max()) < 1e-6  # the weights sum to 1
    root = zarr.open_group(str(path), mode="r")
    for domain, info in root.attrs["ddk"]["domains"].items():
        for split in ("train", "validation"):
            g = root[f"{domain}/{split}"]
            n = info[f"{split}_sequences"]
            names = {name for name, _ in g.arrays()}
            assert names == {"input_ids", "sample_ids", "sample_counts", "shard_done",
                             "shard_manifest"} | ({"target_logprob"} if split == "validation"
                                                  else set())
            counts = g["sample_counts"][:]
            assert counts.shape == (n, SEQ_LEN - 1, 6) and str(counts.dtype) == "uint8"
            assert np.all(counts.sum(-1) == 6)
            assert g["shard_manifest"].shape[1] == len(names) - 2


def test_store_layout_is_as_specified(tmp_path, small_corpus, tiny_teacher_dir):
    path = build(tmp_path, small_corpus, tiny_teacher_dir)
    root = zarr.open_group(str(path), mode="r")
    meta = root.attrs["ddk"]
    assert meta["format_version"] == 1 and meta["complete"] is True
    assert meta["shard_manifest"] == {"array": "shard_manifest",
                                      "columns": ["written", "bytes", "crc32"],
                                      "checksum": "CRC-32 (zlib.crc32) of the stored object's "
                                                  "bytes"}
    L, k, S = meta["seq_len"], meta["k"], meta["sequences_per_shard"]
    ids = meta["encoding"]["id_dtype"]
    for domain, info in meta["domains"].items():
        for split in ("train", "validation"):
            g = root[f"{domain}/{split}"]
            n = info[f"{split}_sequences"]
            expected = {"input_ids": ((n, L), ids), "topk_ids": ((n, L - 1, k), ids),
                        "topk_logprobs": ((n, L - 1, k), "uint16"),
                        "tail_logmass": ((n, L - 1), "uint16")}
            if split == "validation":
                expected["target_logprob"] = ((n, L - 1), "float32")
            names = {name for name, _ in g.arrays()}
            assert names == set(expected) | {"shard_done", "shard_manifest"}
            for name, (shape, dtype) in expected.items():
                a = g[name]
                assert (a.shape, str(a.dtype)) == (shape, dtype), name
                assert a.chunks == (1,) + shape[1:], name  # one sequence per chunk
                assert a.shards == (min(S, n),) + shape[1:], name
                codecs = a.metadata.to_dict()["codecs"][0]["configuration"]
                assert codecs["codecs"][-1]["name"] == "crc32c", name
                assert codecs["index_codecs"][-1]["name"] == "crc32c", name
            flags = g["shard_done"]
            assert str(flags.dtype) == "uint8" and flags.shape == (-(-n // S),)
            assert flags.chunks == (1,) and flags.shards is None
            assert np.all(flags[:] == 1)
            manifest = g["shard_manifest"]
            assert str(manifest.dtype) == "uint64" and manifest.shards is None
            assert manifest.shape == (flags.shape[0], len(expected), 3)
            assert manifest.chunks == (1, len(expected), 3)
            for shard in range(flags.shape[0]):  # written, bytes, CRC-32 of each object
                for i, name in enumerate(expected):  # in layout order
                    key = f"{domain}/{split}/{name}/c/{shard}/0" + ("/0" if g[name].ndim == 3
                                                                   else "")
                    data = (path / key).read_bytes()
                    assert list(manifest[shard, i]) == [1, len(data), zlib.crc32(data)], key
        val = root[f"{domain}/validation"]
        teacher = val.attrs["teacher"]
        target = val["target_logprob"][:].astype(np.float64)
        assert teacher["tokens"] == target.size
        assert teacher["loss"] == pytest.approx(-target.mean(), rel=1e-12)
        assert teacher["ppl"] == pytest.approx(np.exp(teacher["loss"]), rel=1e-12)


def test_every_codec_profile_is_specified():
    """The spec's codec table has a row for every profile ddk can write."""
    rows = re.findall(r"^\| `([a-z0-9-]+)`", doc_text(), flags=re.MULTILINE)
    missing = [p for p in CODEC_PROFILES if p not in rows]
    assert not missing, f"codec profiles missing from the table in {DOC.name}: {missing}"


def _key_paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else key
        out.append(path)
        if isinstance(value, dict):
            out += _key_paths(value, path)
    return out


@pytest.mark.parametrize("kw", [{"target": "topk"}, {"target": "sampled"},
                                {"codec_profile": "pcodec-remap"}])
def test_every_metadata_key_is_documented(tmp_path, small_corpus, tiny_teacher_dir, kw):
    path = build(tmp_path, small_corpus, tiny_teacher_dir, **kw)
    root = zarr.open_group(str(path), mode="r")
    meta = dict(root.attrs["ddk"])
    domains = meta.pop("domains")
    keys = _key_paths(meta) + ["domains"]
    keys += ["domains.{name}." + k for k in next(iter(domains.values()))]
    keys += ["teacher." + k for k in root["code/validation"].attrs["teacher"]]  # group attrs
    documented = set(re.findall(r"`([A-Za-z_{}.]+)`", doc_text()))
    missing = [k for k in keys if k not in documented]
    assert not missing, f"metadata keys not documented in {DOC.name}: {missing}"


def test_checksum_mismatch_is_detected_by_plain_zarr(tmp_path, small_corpus, tiny_teacher_dir):
    path = build(tmp_path, small_corpus, tiny_teacher_dir)
    shard = path / "code" / "train" / "topk_ids" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside the first chunk (chunks come first, the index last)
    shard.write_bytes(bytes(data))
    arr = zarr.open_group(str(path), mode="r")["code/train/topk_ids"]
    with pytest.raises(ValueError, match="checksum"):
        arr[0]
