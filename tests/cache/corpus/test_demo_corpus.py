"""The bundled demo corpus: files present and well-formed, within budget, licences noticed,
located through importlib.resources, and shipped in a non-editable wheel."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ddk.cache.corpus.demo_corpus import DEMO_DOMAINS, demo_corpus_dir, demo_domain_specs
from ddk.cache.corpus.sources import DomainSpec, iter_documents, validate_domains

REPO = Path(__file__).resolve().parents[3]
HARD_LIMIT_BYTES = 8_000_000  # all eight .jsonl.gz files together


@pytest.fixture(scope="module")
def build_script(repo_script):
    return repo_script("scripts/build_demo_corpus.py")


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_eight_domains_with_expected_names():
    assert DEMO_DOMAINS == (
        "python_code",
        "c_math",
        "bible",
        "dialogue",
        "sqlite_docs",
        "licenses",
        "math_qa",
        "dictionary",
    )


def test_specs_point_at_existing_files():
    specs = demo_domain_specs()
    assert [s.name for s in specs] == list(DEMO_DOMAINS)
    for spec in specs:
        assert isinstance(spec, DomainSpec)
        assert spec.text_field == "text"
        path = Path(spec.source)
        assert path.is_file(), spec.source
        assert path.name == f"{spec.name}.jsonl.gz"
        assert path.parent == demo_corpus_dir()
    validate_domains(specs)  # names valid for the store, no duplicates


@pytest.mark.parametrize("name", DEMO_DOMAINS)
def test_domain_file_is_valid_gzip_jsonl(name):
    path = demo_corpus_dir() / f"{name}.jsonl.gz"
    raw = path.read_bytes()
    # Deterministic gzip as written by the build script: mtime 0, no stored file name.
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0 for byte-identical rebuilds"
    assert not raw[3] & 0x08, "gzip header must not store a file name"
    docs = _read(path)
    assert len(docs) >= 20
    sources = set()
    text_bytes = 0
    for doc in docs:
        assert set(doc) == {"text", "source"}
        assert isinstance(doc["text"], str) and doc["text"].strip()
        assert isinstance(doc["source"], str) and doc["source"]
        sources.add(doc["source"])
        text_bytes += len(doc["text"].encode("utf-8"))
    assert len(sources) == len(docs), "each document should name a distinct origin"
    assert 1_000_000 <= text_bytes <= 2_000_000, f"{name}: {text_bytes} bytes of text"


def test_domain_readable_through_corpus_reader():
    spec = demo_domain_specs()[DEMO_DOMAINS.index("bible")]
    texts = list(iter_documents(spec))
    assert len(texts) == len(_read(Path(spec.source)))
    assert texts[0].startswith("Genesis 1\n")


def test_total_compressed_size_within_budget():
    total = sum((demo_corpus_dir() / f"{n}.jsonl.gz").stat().st_size for n in DEMO_DOMAINS)
    assert total <= HARD_LIMIT_BYTES, f"demo corpus is {total} bytes compressed"


def test_notice_names_every_domain_licence_and_pinned_version(build_script):
    notice = (demo_corpus_dir() / "NOTICE").read_text(encoding="utf-8")
    for name in DEMO_DOMAINS:
        assert f"\n{name}\n" in notice, f"NOTICE has no section for {name}"
    for licence in (
        "PSF",
        "BSD",
        "public domain",
        "CC-BY-4.0",
        "CC-BY-2.5",
        "Apache-2.0",
        "nexB Inc.",
    ):
        assert licence in notice, licence
    assert build_script.check_notice(demo_corpus_dir() / "NOTICE") == []


def test_build_script_agrees_with_locator(build_script):
    assert tuple(build_script.DOMAINS) == DEMO_DOMAINS
    assert set(build_script.BUILDERS) == set(DEMO_DOMAINS)


def test_select_spread_is_deterministic_spread_and_bounded(build_script):
    Doc = build_script.Doc
    docs = [Doc(f"doc {i:03d} " + "x" * 92, f"s{i}") for i in range(100)]  # 100 bytes each
    picked = build_script.select_spread(docs, budget=1000)
    assert picked == build_script.select_spread(docs, budget=1000)
    assert len(picked) == 10  # stops at the first document reaching the budget
    assert [d.source for d in picked] == [f"s{i}" for i in range(0, 100, 10)]
    assert build_script.select_spread(docs, budget=10**6) == docs  # under budget: all
    big = docs + [Doc("y" * 5000, "big")]
    assert all(d.source != "big" for d in build_script.select_spread(big, 10**6, max_doc=200))


def test_html_to_text_drops_markup_scripts_and_site_header(build_script):
    page = (
        "<html><head><title>DROP VIEW</title><style>p{}</style></head><body>"
        "<div class=nosearch><div>Home</div><a href=x>Menu</a></div>"
        "<script>var a = 1;</script>"
        "<h1>The  DROP\nVIEW</h1><p><b><a href='syntax/drop-view-stmt.html'>drop-view-stmt:</a>"
        "</b></p><p>Removes&nbsp;a <b>view</b> (see <a href='syntax/x.html'>x</a>).</p>"
        "<pre>int  a;\n  b();</pre>"
        "<button>hide</button><svg><text>diagram</text></svg></body></html>"
    )
    text = build_script.html_to_text(page)
    assert text == "DROP VIEW\n\nThe DROP VIEW\n\nRemoves a view (see x).\n\nint  a;\n  b();\n"


def test_write_jsonl_gz_is_byte_identical(build_script, tmp_path):
    docs = [build_script.Doc("héllo\n", "a"), build_script.Doc("world", "b")]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    build_script.write_jsonl_gz(a, docs)
    build_script.write_jsonl_gz(b, docs)
    assert a.read_bytes() == b.read_bytes()
    assert _read(a) == [{"text": "héllo\n", "source": "a"}, {"text": "world", "source": "b"}]


@pytest.mark.slow
def test_non_editable_wheel_contains_demo_corpus(tmp_path):
    """Build a wheel from a copy of the source tree (no writes into the repo) and look inside."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / item, src / item)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for pkg in ("ddk_cache", "kernels", "cli"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=ignore)
    out = tmp_path / "whl"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("ddk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"ddk/cache/corpus/data/demo_corpus/{n}.jsonl.gz" for n in DEMO_DOMAINS}
    expected |= {"ddk/cache/corpus/data/demo_corpus/NOTICE"}
    # every module of every package directory, so a subpackage missing from pyproject fails
    expected |= {f"ddk/{prefix}/{py.relative_to(REPO / pkg).as_posix()}"
                 for pkg, prefix in (("ddk_cache", "cache"), ("kernels", "kernels"), ("cli", "cli"))
                 for py in (REPO / pkg).rglob("*.py") if "__pycache__" not in py.parts}
    assert expected <= names, sorted(expected - names)
