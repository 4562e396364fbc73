"""The dependency rule of docs/architecture.md, checked on the source by walking its imports.

Layers: ddk.cli -> ddk.cache -> ddk.kernels, nothing upward. Inside ddk.cache the
subpackages follow the data path,

    errors < corpus < teacher < store < cache_job < train < demo

and a module imports only from its own stage or an earlier one. The read/training side
never reaches the write side: `train` imports neither `corpus` nor `cache_job`. And no
two modules import each other, directly or round a longer cycle.

Every import counts, module-level or inside a function (a lazy import is still a
dependency). The checker runs on the real tree and, to show it can fail, on small planted
trees that break each rule.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the layers, lowest first: a package imports only from itself and packages before it
LAYERS = ("ddk.kernels", "ddk.cache", "ddk.cli")
#: the stages of ddk.cache in data-path order (`ddk.cache` itself, its __init__, is "errors")
STAGES = ("errors", "device", "corpus", "teacher", "store", "cache_job", "train", "demo")
#: earlier stages a later one must still not import (the read side never sees the write side)
FORBIDDEN = {("train", "corpus"), ("train", "cache_job")}


def package_dirs(repo: Path) -> dict[str, Path]:
    """Import name -> source folder, from pyproject's setuptools package-dir."""
    with open(repo / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: repo / folder for name, folder in mapping.items()}


def iter_modules(roots: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    for package, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([package, *parts]), path


def imported_modules(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(module, line) for every ddk import in the file; relative imports resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # `from ddk.cache import store` imports ddk.cache.store
                yield f"{module}.{alias.name}", node.lineno


def layer_of(module: str) -> str | None:
    return next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)


def stage_of(module: str) -> str:
    """The ddk.cache stage of a ddk.cache module (its first name below ddk.cache)."""
    rest = module.removeprefix("ddk.cache").lstrip(".")
    first = rest.split(".")[0] if rest else "errors"
    return first if first in STAGES else f"<unknown stage {first!r}>"


def import_violations(repo: Path) -> list[str]:
    """Every import that breaks the rule, as 'file:line: what'; plus every import cycle."""
    roots = package_dirs(repo)
    modules = dict(iter_modules(roots))
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems = []
    for name, path in modules.items():
        where = f"{path.relative_to(repo)}"
        for target, line in imported_modules(name, path):
            if target not in modules:  # third-party, stdlib, or `from pkg import NAME`
                continue
            if target != name:
                graph[name].add(target)
            src_layer, dst_layer = layer_of(name), layer_of(target)
            if LAYERS.index(dst_layer) > LAYERS.index(src_layer):
                problems.append(f"{where}:{line}: {src_layer} imports the higher layer "
                                f"{target}")
                continue
            if src_layer == dst_layer == "ddk.cache":
                src, dst = stage_of(name), stage_of(target)
                for stage in (src, dst):
                    if stage not in STAGES:
                        problems.append(f"{where}:{line}: {stage}: add it to STAGES in the "
                                        "order of docs/architecture.md")
                if src in STAGES and dst in STAGES and STAGES.index(dst) > STAGES.index(src):
                    problems.append(f"{where}:{line}: stage {src} imports the later stage "
                                    f"{dst} ({target})")
                elif (src, dst) in FORBIDDEN:
                    problems.append(f"{where}:{line}: stage {src} must not import {dst} "
                                    f"({target})")
    return problems + [f"import cycle among {', '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each import cycle, sorted: every strongly connected component of
    more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_source_tree_follows_the_dependency_rule():
    assert import_violations(REPO) == []


def test_docs_state_the_same_order():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert " -> ".join(LAYERS[::-1]) in text
    assert " < ".join(STAGES) in text


# -- the checker can fail: small planted trees ---------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "ddk.cache" = "ddk_cache", '
        '"ddk.kernels" = "kernels", "ddk.cli" = "cli" }\n')
    base = {"ddk_cache/__init__.py": "", "ddk_cache/errors.py": "", "kernels/__init__.py": "",
            "kernels/errors.py": "", "cli/__init__.py": "", "cli/main.py": "",
            "ddk_cache/corpus/__init__.py": "", "ddk_cache/store/__init__.py": "",
            "ddk_cache/train/__init__.py": "", "ddk_cache/cache_job/__init__.py": ""}
    for rel, text in {**base, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"kernels/loss.py": "from ddk.cache.errors import ConfigError\n"},
     "kernels/loss.py:1: ddk.kernels imports the higher layer ddk.cache.errors"),
    ({"ddk_cache/store/reader.py": "def f():\n    import ddk.cli.main\n"},
     "ddk_cache/store/reader.py:2: ddk.cache imports the higher layer ddk.cli.main"),
    ({"ddk_cache/corpus/sources.py": "from ddk.cache.store import reader\n",
      "ddk_cache/store/reader.py": ""},
     "ddk_cache/corpus/sources.py:1: stage corpus imports the later stage store"),
    ({"ddk_cache/train/loop.py": "from ddk.cache.cache_job.run import run_cache_job\n",
      "ddk_cache/cache_job/run.py": ""},
     "ddk_cache/train/loop.py:1: stage train must not import cache_job"),
    ({"ddk_cache/store/a.py": "from ddk.cache.store import b\n",
      "ddk_cache/store/b.py": "from . import a\n"},
     "import cycle among ddk.cache.store.a, ddk.cache.store.b"),
    ({"ddk_cache/sampling/x.py": "from ddk.cache.errors import ConfigError\n"},
     "<unknown stage 'sampling'>: add it to STAGES"),
])
def test_planted_violation_is_reported(tmp_path, files, expected):
    problems = import_violations(_tree(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_planted_tree_without_violations_is_clean(tmp_path):
    files = {"ddk_cache/store/reader.py": "from ddk.cache.errors import StoreError\n",
             "ddk_cache/train/loop.py": "from ddk.cache.store.reader import x\n"
                                        "from ddk.kernels.errors import DDKError\n",
             "cli/main.py": "from ddk.cache.train import loop\n"}
    assert import_violations(_tree(tmp_path, files)) == []
