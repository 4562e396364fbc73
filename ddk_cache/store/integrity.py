"""What each finished shard wrote, and whether it is still there: the manifest and the checks.

Zarr reads a missing chunk object as fill values, so a deleted or lost shard object of a
finished cache would silently read back as zeros. A finished shard therefore records, per
data array, the byte size and CRC-32 of the object it wrote (`shard_manifest`, one object
per shard, written after the shard's arrays and before its done flag). A reader can then
tell present and intact from missing, truncated or altered without decoding anything:

    check_store(..., checksums=False)  lists every object and compares its size with the
                                       manifest: cheap (metadata only); the trainer and
                                       `ddk eval` run it before they start
    check_store(..., checksums=True)   also reads every object and compares its CRC-32:
                                       `ddk inspect-cache --check`, the cache job before it
                                       decides which shards to (re)write, and the trainer
                                       and `ddk eval` when the store is small enough

Bytes flipped inside an object that still has its recorded size are caught at read time as
well: every chunk carries zarr's crc32c, and reader.py turns a mismatch into a
DamagedCacheError that names the object.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from ddk.cache.store.layout import SPLITS, num_shards, split_arrays, target_kind
from tqdm.auto import tqdm
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

MANIFEST_ARRAY = "shard_manifest"
#: manifest columns, per data array of a shard: recorded (1 once written), bytes, CRC-32
#: (bytes 0: the object is absent because every value of the shard is the fill value).
RECORDED, NBYTES, CRC32 = 0, 1, 2
MANIFEST_COLUMNS = 3
#: objects fetched concurrently by the checksum pass
_CHECKSUM_BATCH = 64
#: the root-metadata entry that says the shards carry a manifest, and how to read it
#: (caches written before manifests existed lack it: their objects get presence checks only)
MANIFEST_META = {"array": MANIFEST_ARRAY, "columns": ["written", "bytes", "crc32"],
                 "checksum": "CRC-32 (zlib.crc32) of the stored object's bytes"}


@dataclass(frozen=True)
class Damage:
    """One missing or damaged object of the store; `shard` None: not a shard's object."""

    domain: str
    split: str
    shard: int | None
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


@dataclass
class IntegrityReport:
    """The outcome of check_store: what was checked and every damaged object found."""

    checksums: bool
    manifest: bool = True
    objects_checked: int = 0
    bytes_read: int = 0
    damage: list[Damage] = field(default_factory=list)
    #: each checked split's done flags as read (None: the flags array is gone), so that a
    #: caller deciding what is finished does not read them again
    flags: dict[tuple[str, str], np.ndarray | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.damage

    def damaged_shards(self) -> dict[tuple[str, str], list[int]]:
        """(domain, split) -> indices of shards with a damaged object, sorted."""
        out: dict[tuple[str, str], set[int]] = {}
        for d in self.damage:
            if d.shard is not None:
                out.setdefault((d.domain, d.split), set()).add(d.shard)
        return {k: sorted(v) for k, v in out.items()}

    def objects(self) -> list[Damage]:
        """The damage once per object (lost array metadata makes every shard it held
        damaged, but is one object)."""
        out: dict[str, Damage] = {}
        for d in self.damage:
            out.setdefault(d.key, d)
        return list(out.values())

    def describe(self, limit: int = 3) -> str:
        """The first `limit` damaged objects and how many more, for a one-line error."""
        objects = self.objects()
        shown = "; ".join(map(str, objects[:limit]))
        more = len(objects) - limit
        return shown + (f"; and {more} more" if more > 0 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checksums": self.checksums, "manifest": self.manifest,
                "objects_checked": self.objects_checked, "bytes_read": self.bytes_read,
                "damaged": [{"key": d.key, "problem": d.problem, "domain": d.domain,
                             "split": d.split, "shard": d.shard} for d in self.objects()]}


@dataclass(frozen=True)
class _Object:
    """A shard object whose size matches its manifest: its CRC-32 is still to be read."""

    domain: str
    split: str
    shard: int
    key: str
    nbytes: int
    crc32: int


# -- store objects ----------------------------------------------------------------------
def shard_key(arr: zarr.Array, shard: int) -> str:
    """Store key of shard `shard` of `arr` (one object per shard: `c/{shard}/0[/0]`)."""
    chunk = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
    return f"{arr.path}/{chunk}"


def read_object(store: Any, key: str) -> bytes | None:
    """The bytes of one store object, None if absent (any zarr store, local or fsspec)."""
    return read_objects(store, [key])[0]


def read_objects(store: Any, keys: Sequence[str], concurrency: int = 64
                 ) -> list[bytes | None]:
    """The bytes of each object of `keys` (None if absent), fetched concurrently."""

    async def fetch_all() -> list[bytes | None]:
        gate = asyncio.Semaphore(concurrency)

        async def fetch(key: str) -> bytes | None:
            async with gate:
                buf = await store.get(key, prototype=default_buffer_prototype())
            return None if buf is None else buf.to_bytes()

        return list(await asyncio.gather(*(fetch(k) for k in keys)))

    return sync(fetch_all())


def per_shard_rows(arr: zarr.Array) -> tuple[np.ndarray, list[int]]:
    """Every row of a per-shard bookkeeping array (shard_done, shard_manifest: unsharded,
    one object per row), and the rows whose object cannot be decoded (torn, or failing
    the manifest's checksum), which read as the fill value 0."""
    try:
        return np.asarray(arr[:]), []
    except ValueError:  # find the bad rows one by one (only on this error path)
        pass
    out = np.zeros(arr.shape, dtype=arr.dtype)
    bad = []
    for i in range(arr.shape[0]):
        try:
            out[i] = arr[i]
        except ValueError:
            bad.append(i)
    return out, bad


def done_flags(group: zarr.Group, domain: str, split: str) -> np.ndarray | None:
    """The split's shard_done flags (a missing or torn flag reads 0: not done); None if
    the flags array itself is gone."""
    arr = _node(group, f"{domain}/{split}/shard_done")
    return None if arr is None else per_shard_rows(arr)[0]


def missing_shards(group: zarr.Group, domains: Sequence[str]
                   ) -> dict[tuple[str, str], list[int]]:
    """(domain, split) -> indices of shards not flagged done; [-1] if the flags are absent."""
    out = {}
    for domain in domains:
        for split in SPLITS:
            flags = done_flags(group, domain, split)
            if flags is None:
                out[(domain, split)] = [-1]
                continue
            missing = [int(i) for i in np.flatnonzero(flags == 0)]
            if missing:
                out[(domain, split)] = missing
    return out


def _object_sizes(store: Any, prefix: str) -> dict[str, int]:
    """key -> size of every object under `prefix` (one listing; no object is read)."""

    async def sizes() -> dict[str, int]:
        return {key: await store.getsize(key) async for key in store.list_prefix(prefix)}

    return sync(sizes())


def _record(data: bytes | None) -> list[int]:
    return [1, 0, 0] if data is None else [1, len(data), zlib.crc32(data)]


def record_shard(group: zarr.Group, domain: str, split: str, shard: int,
                 kind: str = "topk") -> None:
    """Write the manifest row of a shard whose arrays are written (the cache writer calls
    it just before setting the shard's done flag): each object is read back once.
    `kind` is the cache's target kind (layout.target_kind)."""
    g = group[f"{domain}/{split}"]
    rows = [_record(read_object(group.store, shard_key(g[name], shard)))
            for name in split_arrays(split, kind)]
    g[MANIFEST_ARRAY][shard] = np.asarray(rows, dtype=np.uint64)


def has_manifest(meta: Mapping[str, Any]) -> bool:
    """Whether the cache's finished shards record their objects (see MANIFEST_META)."""
    return "shard_manifest" in meta


def manifest_shape(split: str, n_shards: int, kind: str = "topk") -> tuple[int, int, int]:
    return (n_shards, len(split_arrays(split, kind)), MANIFEST_COLUMNS)


# -- checks -----------------------------------------------------------------------------
def _node(group: zarr.Group, path: str, kind: type = zarr.Array) -> Any:
    """The array (or group, with kind=zarr.Group) at `path`, None if its metadata is gone."""
    try:
        node = group[path]
    except KeyError:
        return None
    return node if isinstance(node, kind) else None


class _SplitCheck:
    """Checks one domain/split: array metadata, done flags, manifest rows, objects."""

    def __init__(self, group: zarr.Group, meta: Mapping[str, Any], domain: str, split: str,
                 report: IntegrityReport) -> None:
        self.group, self.domain, self.split, self.report = group, domain, split, report
        self.prefix = "/".join(p for p in (group.path, domain, split) if p)
        n = int(meta["domains"][domain][f"{split}_sequences"])
        self.n_shards = num_shards(n, int(meta["sequences_per_shard"]))
        self.complete = bool(meta.get("complete", False))
        self.has_manifest = has_manifest(meta)
        self.kind = target_kind(meta)
        self.seen: set[tuple[str, int | None]] = set()

    def damage(self, shard: int | None, key: str, problem: str) -> None:
        if (key, shard) not in self.seen:  # the first problem found of each object
            self.seen.add((key, shard))
            self.report.damage.append(Damage(self.domain, self.split, shard, key, problem))

    def rows(self, name: str) -> np.ndarray | None:
        """The rows of bookkeeping array `name`; torn objects are damage (and read 0)."""
        arr = _node(self.group, f"{self.domain}/{self.split}/{name}")
        if arr is None:
            self.damage(None, f"{self.prefix}/{name}/zarr.json", "array metadata missing")
            return None
        rows, bad = per_shard_rows(arr)
        for i in bad:
            self.damage(i, shard_key(arr, i), "unreadable (torn or altered)")
        return rows

    def flags(self) -> np.ndarray | None:
        flags = self.rows("shard_done")
        if flags is None:
            return None
        for i in np.flatnonzero(flags > 1):
            self.damage(int(i), f"{self.prefix}/shard_done/c/{i}",
                        f"done flag holds {flags[i]}, not 0 or 1 (altered)")
        return flags

    def manifest(self) -> np.ndarray | None:
        if not self.has_manifest:
            return None
        rows = self.rows(MANIFEST_ARRAY)
        if rows is None:
            return np.zeros(manifest_shape(self.split, self.n_shards, self.kind),
                            dtype=np.uint64)
        return rows

    def run(self, shards: Collection[int] | None) -> Iterator[_Object]:
        """Record metadata, flag, manifest, presence and size damage; yield every shard
        object whose size matches its manifest, for the checksum pass."""
        if _node(self.group, f"{self.domain}/{self.split}", zarr.Group) is None:
            self.damage(None, f"{self.prefix}/zarr.json", "group metadata missing")
        flags = self.report.flags[(self.domain, self.split)] = self.flags()
        manifest = self.manifest()
        wanted = range(self.n_shards) if shards is None else sorted(shards)
        if flags is None:  # no flags: every shard is unproven
            for s in wanted:
                self.damage(s, f"{self.prefix}/shard_done/zarr.json", "array metadata missing")
            return
        arrays = {name: _node(self.group, f"{self.domain}/{self.split}/{name}")
                  for name in split_arrays(self.split, self.kind)}
        for name, arr in arrays.items():
            if arr is None:
                self.damage(None, f"{self.prefix}/{name}/zarr.json", "array metadata missing")
        sizes: dict[str, int] = {}
        for arr in arrays.values():
            if arr is not None:
                sizes.update(_object_sizes(self.group.store, f"{arr.path}/c/"))
        for s in wanted:
            yield from self._shard(s, flags, manifest, arrays, sizes)

    def _shard(self, s: int, flags: np.ndarray, manifest: np.ndarray | None,
               arrays: Mapping[str, zarr.Array | None], sizes: Mapping[str, int]
               ) -> Iterator[_Object]:
        recorded = manifest is not None and bool(manifest[s, :, RECORDED].all())
        if not flags[s]:
            if self.complete:  # a finished store whose flag object went missing
                self.damage(s, f"{self.prefix}/shard_done/c/{s}",
                            "done flag missing, but the store is marked complete")
            return
        if manifest is not None and not recorded:
            self.damage(s, f"{self.prefix}/{MANIFEST_ARRAY}/c/{s}/0/0",
                        "manifest entry missing")
            return
        for i, (name, arr) in enumerate(arrays.items()):
            if arr is None:
                self.damage(s, f"{self.prefix}/{name}/zarr.json", "array metadata missing")
                continue
            key = shard_key(arr, s)
            self.report.objects_checked += 1
            size = sizes.get(key)
            want = None if manifest is None else int(manifest[s, i, NBYTES])
            if want == 0 and size is None:
                continue  # recorded as absent: every value is the fill value
            if size is None:
                self.damage(s, key, "missing")
            elif want is not None and size != want:
                self.damage(s, key, f"{size} bytes, {want} written (truncated or replaced)")
            else:
                if manifest is not None:
                    yield _Object(self.domain, self.split, s, key, size,
                                  int(manifest[s, i, CRC32]))


def check_store(group: zarr.Group, meta: Mapping[str, Any], *, checksums: bool,
                shards: Mapping[tuple[str, str], Collection[int]] | None = None,
                max_checksum_bytes: int | None = None,
                progress: bool = False) -> IntegrityReport:
    """Every missing or damaged object of the cache in `group` (see the module docstring).

    `shards` limits the shard checks to those (domain, split) -> shard indices (a cache
    worker checks only its own); None checks every shard. Shards not flagged done are
    unfinished, not damaged, unless the store is marked complete. With
    `max_checksum_bytes`, the CRC-32 pass runs only if it reads at most that many bytes
    (the report's `checksums` says whether it ran).
    """
    report = IntegrityReport(checksums=False, manifest=has_manifest(meta))
    to_read: list[_Object] = []
    for domain in meta["domains"]:
        if _node(group, domain, zarr.Group) is None and not any(
                _node(group, f"{domain}/{split}", zarr.Group) for split in SPLITS):
            key = "/".join(p for p in (group.path, domain, "zarr.json") if p)
            report.damage.append(Damage(domain, "", None, key,
                                        "the whole domain is missing from the store"))
            continue
        for split in SPLITS:
            wanted = None if shards is None else shards.get((domain, split), ())
            to_read += _SplitCheck(group, meta, domain, split, report).run(wanted)
    total = sum(obj.nbytes for obj in to_read)
    if checksums and report.manifest and (max_checksum_bytes is None or total <= max_checksum_bytes):
        report.checksums = True
        _checksum_pass(group.store, to_read, report, progress)
    return report


def _checksum_pass(store: Any, objects: list[_Object], report: IntegrityReport,
                   progress: bool) -> None:
    """Read every object of `objects` and compare its CRC-32 with the manifest's."""
    bar = tqdm(total=sum(obj.nbytes for obj in objects), unit="B", unit_scale=True,
               desc="checking checksums", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(objects), _CHECKSUM_BATCH):
            batch = objects[start:start + _CHECKSUM_BATCH]
            for obj, data in zip(batch, read_objects(store, [o.key for o in batch]),
                                 strict=True):
                data = data or b""
                report.bytes_read += len(data)
                if zlib.crc32(data) != obj.crc32:
                    report.damage.append(Damage(obj.domain, obj.split, obj.shard, obj.key,
                                                "checksum mismatch (bytes altered)"))
                bar.update(obj.nbytes)
    finally:
        bar.close()
