"""Config files: TOML/YAML parsing, key normalisation, both domain forms, every error."""

from __future__ import annotations

from pathlib import Path

import pytest
from ddk.cache.cache_job.config_file import domains_from_config, load_config, normalize_keys
from ddk.cache.corpus.sources import DomainSpec
from ddk.cache.errors import ConfigError, CorpusError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


TOML_MAPPING = """
teacher = "models/teacher"
seq-len = 512
text_field = "body"

[domains]
code = "data/code/"
web-en = { path = "data/web/*.jsonl.gz", text-field = "content" }
"""

YAML_MAPPING = """
teacher: models/teacher
seq-len: 512
text_field: body
domains:
  code: data/code/
  web-en: {path: "data/web/*.jsonl.gz", text-field: content}
"""

EXPECTED = [
    DomainSpec("code", "data/code/", "body"),
    DomainSpec("web-en", "data/web/*.jsonl.gz", "content"),
]


@pytest.mark.parametrize(
    "name, text", [("c.toml", TOML_MAPPING), ("c.yaml", YAML_MAPPING), ("c.yml", YAML_MAPPING)]
)
def test_mapping_form_and_options(tmp_path, name, text):
    cfg = load_config(write(tmp_path, name, text))
    assert normalize_keys(cfg) == {
        "teacher": "models/teacher",
        "seq_len": 512,
        "text_field": "body",
        "domains": cfg["domains"],
    }
    assert domains_from_config(cfg) == EXPECTED


def test_list_of_tables_form(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            "c.toml",
            """
[[domains]]
name = "code"
path = "data/code/"

[[domains]]
name = "web-en"
path = "data/web/*.jsonl.gz"
text_field = "content"
""",
        )
    )
    assert domains_from_config(cfg) == [
        DomainSpec("code", "data/code/", "text"),
        DomainSpec("web-en", "data/web/*.jsonl.gz", "content"),
    ]
    yaml_cfg = load_config(
        write(
            tmp_path,
            "c.yaml",
            """
domains:
  - {name: code, path: data/code/}
  - name: web-en
    path: data/web/*.jsonl.gz
    text-field: content
""",
        )
    )
    assert domains_from_config(yaml_cfg) == domains_from_config(cfg)


def test_base_dir_resolves_relative_paths_only(tmp_path):
    cfg = {"domains": {"a": "rel/dir", "b": str(tmp_path / "abs")}}
    assert domains_from_config(cfg, base_dir=tmp_path / "conf") == [
        DomainSpec("a", str(tmp_path / "conf" / "rel/dir")),
        DomainSpec("b", str(tmp_path / "abs")),
    ]
    assert domains_from_config(cfg)[0].source == "rel/dir"


def test_no_domains_and_empty_files(tmp_path):
    assert domains_from_config({"seq_len": 3}) == []
    assert load_config(write(tmp_path, "e.yaml", "")) == {}
    assert load_config(write(tmp_path, "e.toml", "")) == {}


def test_normalize_keys_keeps_domain_names_and_rejects_clashes():
    cfg = {"max-train-sequences": 5, "domains": {"web-en": "x"}}
    assert normalize_keys(cfg) == {"max_train_sequences": 5, "domains": {"web-en": "x"}}
    with pytest.raises(ConfigError, match="'seq-len' and 'seq_len' set the same option"):
        normalize_keys({"seq-len": 1, "seq_len": 2})
    with pytest.raises(ConfigError, match="option names must be strings"):
        normalize_keys({1: "x"})


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.toml", 'teacher = "x"\nseq_len = = 3\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 2"):
        load_config(path)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "teacher: x\ndomains:\n  code: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+, column \d+: invalid YAML"):
        load_config(path)


def test_duplicate_yaml_key_rejected(tmp_path):
    path = write(tmp_path, "dup.yaml", "seq_len: 1\nteacher: t\nseq_len: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: line 3, .*duplicate key 'seq_len'"):
        load_config(path)


def test_duplicate_toml_key_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load_config(write(tmp_path, "dup.toml", "seq_len = 1\nseq_len = 2\n"))


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("list.yaml", "- a\n- b\n", "top level must be a mapping.*got list"),
        ("scalar.yaml", "42\n", "top level must be a mapping.*got int"),
        ("c.json", "{}", r"unknown type '\.json'"),
        ("noext", "x = 1", r"unknown type '\(no suffix\)'"),
    ],
)
def test_bad_config_files(tmp_path, name, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, name, text))


def test_missing_and_non_utf8_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "latin.toml").write_bytes(b'teacher = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin\.toml is not valid UTF-8"):
        load_config(tmp_path / "latin.toml")


@pytest.mark.parametrize(
    "domains, error, message",
    [
        (
            [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}],
            CorpusError,
            "duplicate domain name 'a'",
        ),
        ({"-bad": "x"}, CorpusError, "invalid domain name '-bad'"),
        ([{"name": "a b", "path": "x"}], CorpusError, "invalid domain name 'a b'"),
        ([{"name": "a"}], ConfigError, "entry 1: missing 'path'"),
        ([{"path": "x"}], ConfigError, "entry 1: missing 'name'"),
        ([{"name": "a", "path": "x", "weight": 2}], ConfigError, r"unknown keys \['weight'\]"),
        ({"a": {"path": "x", "glob": "*"}}, ConfigError, r"unknown keys \['glob'\]"),
        ({"a": 3}, ConfigError, "'path' must be a non-empty string, got 3"),
        ({"a": {"text_field": "t"}}, ConfigError, "'path' must be a non-empty string, got None"),
        (
            {"a": {"path": "x", "text_field": ""}},
            ConfigError,
            "'text_field' must be a non-empty string",
        ),
        (["x"], ConfigError, "entry 1: expected a table"),
        ("data/", ConfigError, "'domains' must be a table"),
    ],
)
def test_bad_domain_entries(domains, error, message):
    with pytest.raises(error, match=message):
        domains_from_config({"domains": domains})


@pytest.mark.parametrize("name, text", [
    ("t.toml", 'overwrite = "false"\nk = 8.5\nseq-len = "64"\nbatch_size = [8]\nquiet = true\n'),
    ("t.yaml", "overwrite: 'false'\nk: 8.5\nseq-len: '64'\nbatch_size: [8]\nquiet: yes\n"),
])
def test_values_keep_the_types_the_file_gives_them(tmp_path, name, text):
    """No conversion here: the CLI checks each value's type against its option (a quoted
    "false" is a string, which it refuses, not a false flag)."""
    assert normalize_keys(load_config(write(tmp_path, name, text))) == {
        "overwrite": "false", "k": 8.5, "seq_len": "64", "batch_size": [8], "quiet": True}
