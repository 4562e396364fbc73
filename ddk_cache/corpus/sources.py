"""Domains and how their documents are read.

A *domain* is a named text source (the DDK paper's "domain": code, prose, math, ...). Its
source is a directory (searched recursively), a single file, or a glob pattern, holding
files of the supported formats:

* ``.txt`` / ``.md``: one document per file (a leading UTF-8 BOM is dropped).
* ``.jsonl`` / ``.jsonl.gz``: one document per non-blank line, the string in ``text_field``.
* ``.parquet``: one document per row of the string column ``text_field`` (read with pyarrow).

Everything here is deterministic: files are visited in sorted order and documents in file
order, so the same inputs always give the same document sequence. Every problem with the
inputs is a CorpusError whose message names the domain's file (and line/row) at fault.
Documents that are empty or only whitespace are skipped: they carry no text to learn from.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ddk.cache.errors import CorpusError

#: Suffixes read by iter_documents (matched case-insensitively on the file name).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".jsonl", ".jsonl.gz", ".parquet")

# A Zarr group name that is also a safe file name on every OS: letters, digits, '_' and '-',
# 1..64 characters, not starting with '-' (looks like an option) or '.' (hidden / '..').
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_GLOB_CHARS = re.compile(r"[*?\[]")
_FINGERPRINT_VERSION = "ddk-source-fingerprint-v1"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DomainSpec:
    """A named text source.

    name:       [A-Za-z0-9_-]{1,64}, not starting with '-' or '.'; used as a Zarr group name.
    source:     a directory, a file, or a glob pattern, as given by the user.
    text_field: the JSON key / Parquet column holding the text (.jsonl, .jsonl.gz, .parquet).
    """

    name: str
    source: str
    text_field: str = "text"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CorpusError(
            f"invalid domain name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "not starting with '-' or '.' (it becomes a group name in the store)"
        )


def parse_domain_arg(arg: str, text_field: str = "text") -> DomainSpec:
    """Parse a command-line ``--domain name=path`` value into a DomainSpec.

    The split is at the first '=', so paths may contain '='. Raises CorpusError when the
    form is not ``name=path`` or the name is invalid.
    """
    name, sep, source = arg.partition("=")
    name = name.strip()
    source = source.strip()
    if not sep or not name or not source:
        raise CorpusError(
            f"invalid --domain {arg!r}: expected NAME=PATH, e.g. --domain code=data/code/ "
            "(PATH is a directory, a file or a glob pattern)"
        )
    _check_name(name)
    if not text_field:
        raise CorpusError(f"domain {name!r}: the text field name must not be empty")
    return DomainSpec(name=name, source=source, text_field=text_field)


def validate_domains(specs: Sequence[DomainSpec]) -> None:
    """Raise CorpusError if a name is invalid or two domains share a name.

    Names that differ only in case are also rejected: they would collide as directories of
    the store on case-insensitive file systems (macOS, Windows).
    """
    seen: dict[str, str] = {}
    for spec in specs:
        _check_name(spec.name)
        if not spec.text_field:
            raise CorpusError(f"domain {spec.name!r}: the text field name must not be empty")
        key = spec.name.lower()
        if key in seen:
            other = seen[key]
            what = "given twice" if other == spec.name else f"clashes with {other!r} (case)"
            raise CorpusError(
                f"duplicate domain name {spec.name!r} ({what}): every domain needs its own name"
            )
        seen[key] = spec.name


def _is_supported(path: Path) -> bool:
    lower = path.name.lower()
    return any(lower.endswith(s) for s in SUPPORTED_SUFFIXES)


def _format_of(path: Path) -> str:
    lower = path.name.lower()
    for suffix in (".jsonl.gz", ".jsonl", ".parquet", ".txt", ".md"):
        if lower.endswith(suffix):
            return suffix
    raise CorpusError(f"{path}: unsupported file type; supported: {', '.join(SUPPORTED_SUFFIXES)}")


def _walk_dir(root: Path) -> list[Path]:
    """Supported files under root, recursively, skipping hidden entries.

    Symlinked files are read; symlinked subdirectories are not entered (no cycles).
    """

    def fail(err: OSError) -> None:
        raise CorpusError(f"cannot list {err.filename}: {err.strerror or err}")

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            p = Path(dirpath) / fn
            if not fn.startswith(".") and _is_supported(p) and p.is_file():
                found.append(p)
    return found


def _source_root(spec: DomainSpec) -> Path:
    """The directory that file paths of the domain are taken relative to (for fingerprints).

    A directory source is its own root; a file's root is its parent; a glob's root is the
    longest leading part of the pattern without wildcard characters.
    """
    source = os.path.expanduser(spec.source)
    if _GLOB_CHARS.search(source):
        parts = Path(source).parts
        fixed: list[str] = []
        for part in parts:
            if _GLOB_CHARS.search(part):
                break
            fixed.append(part)
        return Path(*fixed) if fixed else Path(".")
    p = Path(source)
    return p if p.is_dir() else p.parent


def resolve_files(spec: DomainSpec) -> list[Path]:
    """The domain's input files, sorted (deterministic), without duplicates.

    * directory: searched recursively for supported suffixes (hidden entries skipped);
    * file: must have a supported suffix;
    * glob pattern (``*``, ``?``, ``[``; ``**`` recurses): matched files with a supported
      suffix, matched directories searched as above.

    Files are ordered by their path relative to the source root (see the fingerprint), so
    the order does not depend on where the corpus lives. Raises CorpusError if the source
    does not exist or holds no supported file.
    """
    source = os.path.expanduser(spec.source)
    where = f"domain {spec.name!r} (source {spec.source!r})"
    if _GLOB_CHARS.search(source):
        files: list[Path] = []
        for match in glob.glob(source, recursive=True):
            p = Path(match)
            if p.is_dir():
                files.extend(_walk_dir(p))
            elif p.is_file() and _is_supported(p):
                files.append(p)
    else:
        p = Path(source)
        if p.is_dir():
            files = _walk_dir(p)
        elif p.is_file():
            if not _is_supported(p):
                raise CorpusError(
                    f"{where}: {p} is not a supported file type; "
                    f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
                )
            files = [p]
        elif p.exists():
            raise CorpusError(f"{where}: {p} is neither a file nor a directory")
        else:
            raise CorpusError(f"{where}: {p} does not exist; check the path")
    if not files:
        raise CorpusError(
            f"{where} is empty: no {', '.join(SUPPORTED_SUFFIXES)} files found; "
            "check the path or pattern"
        )
    root = _source_root(spec)
    unique = {os.path.normpath(f): f for f in files}
    return sorted(unique.values(), key=lambda f: (_relative(f, root), str(f)))


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # different drive on Windows
        return path.as_posix()


def _binary(where: str, remove: str = "it from the domain") -> CorpusError:
    """The error for text holding NUL: no text has them, binary files (and UTF-16) do."""
    return CorpusError(
        f"{where} contains NUL bytes: it looks binary (or UTF-16), not UTF-8 text; "
        f"remove {remove} or point the domain elsewhere"
    )


def _decode(data: bytes, where: str, remove: str = "it from the domain") -> str:
    """`data` as UTF-8 text; CorpusError naming `where` if it holds NUL bytes or is not UTF-8."""
    if b"\0" in data:  # valid UTF-8 (a file of zeros decodes), but not text
        raise _binary(where, remove)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{where} is not valid UTF-8 (byte {e.start}: {data[e.start : e.start + 1]!r}); "
            "convert it to UTF-8 or remove it from the domain"
        ) from None


def _read_text_file(path: Path) -> Iterator[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    text = _decode(data, str(path))
    text = text.removeprefix("\ufeff")
    yield text


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` string of each non-blank line of a JSON Lines file (gzip if .gz)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                line = _decode(raw, where, "the line")
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(
                        f"{where}: not valid JSON ({e.msg}); fix or remove the line"
                    ) from None
                if not isinstance(record, dict):
                    raise CorpusError(
                        f"{where}: expected a JSON object with a {text_field!r} field, "
                        f"got {type(record).__name__}"
                    )
                if text_field not in record:
                    keys = ", ".join(map(repr, list(record)[:10])) or "none"
                    raise CorpusError(
                        f"{where}: no {text_field!r} field (fields: {keys}); "
                        "set the text field option to the key that holds the text"
                    )
                value = record[text_field]
                if not isinstance(value, str):
                    raise CorpusError(
                        f"{where}: field {text_field!r} is {type(value).__name__}, not a string"
                    )
                if "\0" in value:  # written escaped, as \u0000
                    raise _binary(f"{where}: field {text_field!r} (\\u0000)", "the line")
                yield value
    except OSError as e:  # unreadable file, or a corrupt/truncated gzip stream
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    except (EOFError, zlib.error) as e:
        raise CorpusError(f"cannot read {path}: corrupt or truncated gzip data ({e})") from None


def _decodes(scalar) -> bool:
    try:
        scalar.as_py()
    except UnicodeDecodeError:
        return False
    return True


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    """The values of the string column `text_field` of a Parquet file, row by row."""
    # pyarrow takes a noticeable time to import and only Parquet sources need it; this
    # module is imported when the CLI starts (through cache_job.config)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    except (pa.ArrowException, ValueError) as e:
        raise CorpusError(f"cannot read {path} as Parquet: {e}") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        cols = ", ".join(map(repr, schema.names[:20])) or "none"
        raise CorpusError(
            f"{path}: no column {text_field!r} (columns: {cols}); "
            "set the text field option to the column that holds the text"
        )
    col_type = schema.field(text_field).type
    if pa.types.is_dictionary(col_type):
        col_type = col_type.value_type
    if not (
        pa.types.is_string(col_type)
        or pa.types.is_large_string(col_type)
        or getattr(pa.types, "is_string_view", lambda t: False)(col_type)
    ):
        raise CorpusError(f"{path}: column {text_field!r} has type {col_type}, not string")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            column = batch.column(0)
            try:
                values = column.to_pylist()
            except UnicodeDecodeError:
                bad = next(i for i in range(len(column)) if not _decodes(column[i]))
                raise CorpusError(
                    f"{path}: row {row + bad} of column {text_field!r} is not valid UTF-8; "
                    "convert it to UTF-8 or remove it from the domain"
                ) from None
            for value in values:
                if value is None:
                    raise CorpusError(
                        f"{path}: row {row} of column {text_field!r} is null; "
                        "drop or fill null rows"
                    )
                if "\0" in value:
                    raise _binary(f"{path}: row {row} of column {text_field!r}", "the row")
                row += 1
                yield value
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    except pa.ArrowException as e:
        raise CorpusError(f"cannot read {path} as Parquet: {e}") from None


def iter_documents(spec: DomainSpec) -> Iterator[str]:
    """Yield the domain's documents in a deterministic order.

    Files come in resolve_files order; within a file: .txt/.md is one document,
    .jsonl(.gz) one per line (blank lines skipped), .parquet one per row. Documents that
    are empty or whitespace-only are skipped. Raises CorpusError naming the file for a
    non-UTF-8, binary (NUL bytes) or unreadable file, file:line for a JSONL line that is
    not a JSON object or lacks (or has a non-string) text_field, and file:line or
    file:row for a text value holding NUL characters.
    """
    for path in resolve_files(spec):
        fmt = _format_of(path)
        if fmt in (".txt", ".md"):
            docs = _read_text_file(path)
        elif fmt == ".parquet":
            docs = _read_parquet(path, spec.text_field)
        else:
            docs = _read_jsonl(path, spec.text_field)
        for doc in docs:
            if doc.strip():
                yield doc


def source_fingerprint(spec: DomainSpec) -> str:
    """A sha256 hex digest of the domain's inputs.

    Covers, for every file of resolve_files: its path relative to the source root, its
    size and the sha256 of its bytes; plus the text_field. It changes iff the inputs
    change (a file added, removed, renamed or edited, or another text field), and not when
    the corpus directory is moved or its files' timestamps change. Used to refuse resuming
    a store that was built from different sources.
    """
    root = _source_root(spec)
    h = hashlib.sha256()
    h.update(_FINGERPRINT_VERSION.encode())
    h.update(b"\0text_field\0" + spec.text_field.encode("utf-8"))
    for path in resolve_files(spec):
        content = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    content.update(chunk)
                    size += len(chunk)
        except OSError as e:
            raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
        rel = _relative(path, root)
        h.update(f"\0file\0{rel}\0{size}\0{content.hexdigest()}".encode())
    return h.hexdigest()
