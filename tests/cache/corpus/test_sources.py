"""Domains: argument parsing, name checks, file discovery, every input format and error."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from ddk.cache.corpus.sources import (
    DomainSpec,
    iter_documents,
    parse_domain_arg,
    resolve_files,
    source_fingerprint,
    validate_domains,
)
from ddk.cache.errors import CorpusError


def write_jsonl(path: Path, records: list, *, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(lines, mtime=0) if compress else lines)
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=2)
    return path


# ---------------------------------------------------------------- names and --domain


def test_parse_domain_arg_splits_at_first_equals():
    spec = parse_domain_arg("code=data/a=b/*.jsonl", text_field="content")
    assert spec == DomainSpec(name="code", source="data/a=b/*.jsonl", text_field="content")
    assert parse_domain_arg("web-2_x=d").text_field == "text"


@pytest.mark.parametrize("arg", ["code", "=path", "code=", "code= ", ""])
def test_parse_domain_arg_rejects_bad_form(arg):
    with pytest.raises(CorpusError, match="expected NAME=PATH"):
        parse_domain_arg(arg)


@pytest.mark.parametrize("name", ["-code", ".code", "a/b", "a b", "a.b", "x" * 65, "é", "..", ""])
def test_invalid_names_rejected(name):
    with pytest.raises(CorpusError, match="invalid domain name"):
        validate_domains([DomainSpec(name, "x")])
    if name:
        with pytest.raises(CorpusError, match="invalid domain name"):
            parse_domain_arg(f"{name}=x")


@pytest.mark.parametrize("name", ["a", "A_b-1", "_x", "0", "x" * 64])
def test_valid_names_accepted(name):
    validate_domains([DomainSpec(name, "x")])
    assert parse_domain_arg(f"{name}=x").name == name


def test_duplicate_names_rejected():
    with pytest.raises(CorpusError, match="duplicate domain name 'code'"):
        validate_domains(
            [DomainSpec("code", "a"), DomainSpec("math", "b"), DomainSpec("code", "c")]
        )
    with pytest.raises(CorpusError, match="case"):
        validate_domains([DomainSpec("Code", "a"), DomainSpec("code", "b")])


# ---------------------------------------------------------------- resolve_files


def test_directory_is_searched_recursively_sorted_and_filtered(tmp_path):
    root = tmp_path / "dom"
    for rel in ["b.txt", "a/z.md", "a/y.jsonl", "c.jsonl.gz", "d.parquet", "e.TXT"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    for rel in ["notes.csv", "readme", ".hidden.txt", ".git/x.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    files = resolve_files(DomainSpec("d", str(root)))
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == ["a/y.jsonl", "a/z.md", "b.txt", "c.jsonl.gz", "d.parquet", "e.TXT"]


def test_single_file_and_glob_sources(tmp_path):
    for rel in ["x/1.jsonl", "x/2.jsonl", "x/3.txt", "x/sub/4.jsonl"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    single = resolve_files(DomainSpec("d", str(tmp_path / "x/3.txt")))
    assert single == [tmp_path / "x/3.txt"]
    flat = resolve_files(DomainSpec("d", str(tmp_path / "x/*.jsonl")))
    assert [f.name for f in flat] == ["1.jsonl", "2.jsonl"]
    deep = resolve_files(DomainSpec("d", str(tmp_path / "x/**/*.jsonl")))
    assert [f.relative_to(tmp_path / "x").as_posix() for f in deep] == [
        "1.jsonl",
        "2.jsonl",
        "sub/4.jsonl",
    ]
    # A glob matching directories searches them.
    dirs = resolve_files(DomainSpec("d", str(tmp_path / "x*")))
    assert len(dirs) == 4


def test_missing_empty_and_unsupported_sources(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        resolve_files(DomainSpec("d", str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"domain 'd' \(source .*empty.*\) is empty"):
        resolve_files(DomainSpec("d", str(tmp_path / "empty")))
    (tmp_path / "only_csv").mkdir()
    (tmp_path / "only_csv" / "a.csv").write_text("x")
    with pytest.raises(CorpusError, match="is empty"):
        resolve_files(DomainSpec("d", str(tmp_path / "only_csv")))
    with pytest.raises(CorpusError, match="not a supported file type"):
        resolve_files(DomainSpec("d", str(tmp_path / "only_csv" / "a.csv")))
    with pytest.raises(CorpusError, match="is empty"):
        resolve_files(DomainSpec("d", str(tmp_path / "*.jsonl")))


# ---------------------------------------------------------------- formats


def test_txt_and_md_are_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffhello\nworld\n".encode())
    (tmp_path / "b.md").write_text("# Title\n\nbody ü\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("  \n\t", encoding="utf-8")  # whitespace only: skipped
    docs = list(iter_documents(DomainSpec("d", str(tmp_path))))
    assert docs == ["hello\nworld\n", "# Title\n\nbody ü\n"]


@pytest.mark.parametrize("compress", [False, True])
def test_jsonl_one_document_per_line(tmp_path, compress):
    name = "docs.jsonl.gz" if compress else "docs.jsonl"
    path = tmp_path / name
    body = (
        json.dumps({"content": "first", "text": "ignored"})
        + "\n\n   \n"
        + json.dumps({"content": "sécond\nline"})
        + "\n"
        + json.dumps({"content": ""})
        + "\n"
    ).encode()
    path.write_bytes(gzip.compress(body) if compress else body)
    docs = list(iter_documents(DomainSpec("d", str(path), text_field="content")))
    assert docs == ["first", "sécond\nline"]


def test_parquet_one_document_per_row(tmp_path):
    write_parquet(tmp_path / "p.parquet", {"body": ["a", "b", "c", "d", "e"], "n": [1, 2, 3, 4, 5]})
    docs = list(iter_documents(DomainSpec("d", str(tmp_path), text_field="body")))
    assert docs == ["a", "b", "c", "d", "e"]


def test_mixed_formats_follow_file_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "j1"}, {"text": "j2"}])
    write_jsonl(tmp_path / "c.jsonl.gz", [{"text": "g1"}], compress=True)
    write_parquet(tmp_path / "d.parquet", {"text": ["p1", "p2"]})
    (tmp_path / "a.txt").write_text("t1")
    assert list(iter_documents(DomainSpec("d", str(tmp_path)))) == [
        "t1",
        "j1",
        "j2",
        "g1",
        "p1",
        "p2",
    ]


# ---------------------------------------------------------------- errors


def test_non_utf8_text_file_is_named(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(CorpusError, match=r"bad\.txt is not valid UTF-8"):
        list(iter_documents(DomainSpec("d", str(tmp_path))))


def test_non_utf8_jsonl_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"x\.jsonl:2 is not valid UTF-8"):
        list(iter_documents(DomainSpec("d", str(path))))


BINARY = "contains NUL bytes: it looks binary \\(or UTF-16\\), not UTF-8 text; remove "


@pytest.mark.parametrize("name, data", [
    ("zeros.txt", b"\0" * 4096),  # valid UTF-8, but no text
    ("image.md", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
    ("utf16.txt", "hello".encode("utf-16")),
])
def test_text_file_with_nul_bytes_is_refused_as_binary(tmp_path, name, data):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CorpusError) as e:
        list(iter_documents(DomainSpec("d", str(tmp_path))))
    assert str(e.value) == (f"{tmp_path / name} contains NUL bytes: it looks binary (or "
                            "UTF-16), not UTF-8 text; remove it from the domain or point the "
                            "domain elsewhere")


def test_jsonl_with_nul_is_refused_as_binary(tmp_path):
    escaped = tmp_path / "escaped.jsonl"  # a text value holding \u0000
    write_jsonl(escaped, [{"text": "fine"}, {"text": "bin\0ary"}])
    with pytest.raises(CorpusError, match=r"escaped\.jsonl:2: field 'text' \(\\u0000\) "
                                          + BINARY + "the line or point the domain elsewhere"):
        list(iter_documents(DomainSpec("d", str(escaped))))
    raw = tmp_path / "raw.jsonl.gz"  # a NUL byte in the line itself
    raw.write_bytes(gzip.compress(b'{"text": "a"}\n\0\0\0\0\n'))
    with pytest.raises(CorpusError, match=r"raw\.jsonl\.gz:2 " + BINARY + "the line"):
        list(iter_documents(DomainSpec("d", str(raw))))
    # other fields may hold anything: only the text is checked
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "ok", "meta": "\0"}])
    assert list(iter_documents(DomainSpec("d", str(other)))) == ["ok"]


def test_parquet_row_with_nul_is_refused_as_binary(tmp_path):
    write_parquet(tmp_path / "p.parquet", {"text": ["a", "b", "c\0d"]})
    with pytest.raises(CorpusError, match=r"p\.parquet: row 2 of column 'text' " + BINARY
                                          + "the row"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "p.parquet"))))


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("secret")
    if os.geteuid() != 0:  # a real permission error
        path.chmod(0)
    else:  # root reads anything: inject the error open() would raise
        real = Path.read_bytes

        def read_bytes(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    try:
        with pytest.raises(CorpusError, match=r"cannot read .*locked\.txt: Permission denied"):
            list(iter_documents(DomainSpec("d", str(tmp_path))))
    finally:
        path.chmod(0o644)


def test_corrupt_gzip_and_parquet_are_named(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "broken.jsonl.gz").write_bytes(b"this is not gzip data")
    with pytest.raises(CorpusError, match=r"cannot read .*broken\.jsonl\.gz"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "g"))))
    truncated = gzip.compress(b'{"text": "a"}\n' * 1000)[:40]
    (tmp_path / "g" / "broken.jsonl.gz").write_bytes(truncated)
    with pytest.raises(CorpusError, match=r"cannot read .*broken\.jsonl\.gz"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "g"))))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CorpusError, match=r"broken\.parquet"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "p"))))


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "unterminated', r"x\.jsonl:3: not valid JSON"),
        ("not json at all", r"x\.jsonl:3: not valid JSON"),
        ('["a", "list"]', r"x\.jsonl:3: expected a JSON object"),
        ('{"body": "no text key"}', r"x\.jsonl:3: no 'text' field \(fields: 'body'\)"),
        ('{"text": 42}', r"x\.jsonl:3: field 'text' is int, not a string"),
        ('{"text": null}', r"x\.jsonl:3: field 'text' is NoneType"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        list(iter_documents(DomainSpec("d", str(path))))


def test_bad_jsonl_gz_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n{"other": "b"}\n'))
    with pytest.raises(CorpusError, match=r"x\.jsonl\.gz:2: no 'text' field"):
        list(iter_documents(DomainSpec("d", str(path))))


def test_parquet_missing_column_null_and_non_string(tmp_path):
    write_parquet(tmp_path / "a" / "p.parquet", {"body": ["x"]})
    with pytest.raises(CorpusError, match=r"p\.parquet: no column 'text' \(columns: 'body'\)"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "a"))))
    write_parquet(tmp_path / "b" / "p.parquet", {"text": ["x", "y", None]})
    with pytest.raises(CorpusError, match=r"p\.parquet: row 2 of column 'text' is null"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "b"))))
    write_parquet(tmp_path / "c" / "p.parquet", {"text": [1, 2]})
    with pytest.raises(CorpusError, match=r"column 'text' has type int64, not string"):
        list(iter_documents(DomainSpec("d", str(tmp_path / "c"))))


# ---------------------------------------------------------------- fingerprint


def _fp_domain(root: Path) -> DomainSpec:
    write_jsonl(root / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "sub" / "b.txt").write_text("gamma")
    return DomainSpec("d", str(root))


def test_fingerprint_stable_and_location_independent(tmp_path):
    spec = _fp_domain(tmp_path / "one")
    fp = source_fingerprint(spec)
    assert len(fp) == 64 and fp == source_fingerprint(spec)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    assert source_fingerprint(DomainSpec("d", str(tmp_path / "two"))) == fp
    os.utime(tmp_path / "one" / "a.jsonl", (1, 1))  # timestamps are not inputs
    assert source_fingerprint(spec) == fp
    (tmp_path / "one" / "ignored.csv").write_text("not an input")
    assert source_fingerprint(spec) == fp
    # A glob over the same files and the same root gives the same relative paths.
    assert source_fingerprint(DomainSpec("d", str(tmp_path / "one" / "**" / "*.*"))) == fp


def test_fingerprint_changes_with_inputs(tmp_path):
    spec = _fp_domain(tmp_path / "d")
    fp = source_fingerprint(spec)
    b = tmp_path / "d" / "sub" / "b.txt"
    b.write_text("gammA")  # same size, different content
    fp_edit = source_fingerprint(spec)
    assert fp_edit != fp
    b.rename(tmp_path / "d" / "sub" / "c.txt")
    fp_rename = source_fingerprint(spec)
    assert fp_rename not in (fp, fp_edit)
    (tmp_path / "d" / "new.md").write_text("delta")
    fp_add = source_fingerprint(spec)
    assert fp_add not in (fp, fp_edit, fp_rename)
    assert source_fingerprint(DomainSpec("d", spec.source, text_field="body")) != fp_add
    (tmp_path / "d" / "new.md").unlink()
    assert source_fingerprint(spec) == fp_rename


def test_parquet_non_utf8_row_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pyarrow validates UTF-8 when building a string array, so write bytes viewed as string.
    column = pa.array([b"ok", b"fine", b"caf\xe9"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": column}), tmp_path / "bad.parquet")
    with pytest.raises(
        CorpusError, match=r"bad\.parquet: row 2 of column 'text' is not valid UTF-8"
    ):
        list(iter_documents(DomainSpec("d", str(tmp_path / "bad.parquet"))))
