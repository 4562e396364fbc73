"""Locate the bundled demo corpus: eight small, licence-clean text domains shipped as package data.

Each domain is one gzip JSON Lines file, ``ddk/cache/corpus/data/demo_corpus/<name>.jsonl.gz``, one
document per line (``{"text": ..., "source": ...}``), about 1.75 MB of text per domain. Sources,
versions and licences are listed in the ``NOTICE`` file beside them; they are rebuilt by
``scripts/build_demo_corpus.py``. The files are found with importlib.resources, so this works
from an editable install and from an installed wheel alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import CorpusError

DEMO_DOMAINS: tuple[str, ...] = (
    "python_code",
    "c_math",
    "bible",
    "dialogue",
    "sqlite_docs",
    "licenses",
    "math_qa",
    "dictionary",
)


def demo_corpus_dir() -> Path:
    """The folder holding the demo corpus files and their NOTICE."""
    ref = resources.files("ddk.cache.corpus").joinpath("data", "demo_corpus")
    path = Path(str(ref))
    if not path.is_dir():
        raise CorpusError(
            f"the bundled demo corpus is missing (looked in {ref}); reinstall ddk from a wheel "
            "or source tree that includes ddk_cache/corpus/data/demo_corpus, or rebuild it with "
            "scripts/build_demo_corpus.py"
        )
    return path


def demo_domain_specs() -> list[DomainSpec]:
    """One DomainSpec per bundled demo domain, in DEMO_DOMAINS order, text in field "text"."""
    root = demo_corpus_dir()
    specs = []
    for name in DEMO_DOMAINS:
        path = root / f"{name}.jsonl.gz"
        if not path.is_file():
            raise CorpusError(
                f"demo domain {name!r}: {path} is missing; reinstall ddk or rebuild the demo "
                "corpus with scripts/build_demo_corpus.py"
            )
        specs.append(DomainSpec(name, str(path), text_field="text"))
    return specs
