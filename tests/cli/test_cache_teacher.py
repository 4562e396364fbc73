"""`ddk cache-teacher`: options and --config file -> CacheJobConfig (the job itself is
tested in tests/cache/cache_job/test_run.py; here it is replaced by a stand-in)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from ddk.cache.cache_job.config import CacheJobConfig
from ddk.cache.cache_job.config_file import domains_from_config, load_config
from ddk.cache.corpus.sources import DomainSpec
from ddk.cli.main import cli

CONFIG = """
teacher = "file-teacher"
seq-len = 99
k = 4
text_field = "body"

[domains]
code = "data/code/"
"""


class Job(Exception):
    def __init__(self, cfg: CacheJobConfig) -> None:
        super().__init__()
        self.cfg = cfg


@pytest.fixture
def job_of(monkeypatch):
    """`ddk ARGS...` -> the CacheJobConfig it would run."""
    def stand_in(cfg: CacheJobConfig) -> None:
        raise Job(cfg)

    monkeypatch.setattr("ddk.cache.cache_job.run.run_cache_job", stand_in)

    def run(*args: str) -> CacheJobConfig:
        result = CliRunner().invoke(cli, ["cache-teacher", *args])
        assert isinstance(result.exception, Job), result.output
        return result.exception.cfg

    return run


def test_command_line_wins_over_the_config_file_which_wins_over_defaults(tmp_path, job_of):
    path = tmp_path / "job.toml"
    path.write_text(CONFIG, encoding="utf-8")
    cfg = job_of("--config", str(path), "--k", "8")
    domains = domains_from_config(load_config(path), base_dir=path.parent)
    assert len(domains) == 1 and domains[0].text_field == "body"
    assert cfg == CacheJobConfig(teacher="file-teacher", seq_len=99, k=8, domains=domains)

    # --domain replaces the file's domains; the file's text_field still applies to them
    cfg = job_of("--config", str(path), "--domain", "web=data/web")
    assert cfg.domains == [DomainSpec("web", "data/web", "body")]
    assert (cfg.teacher, cfg.seq_len, cfg.k) == ("file-teacher", 99, 4)


def test_renamed_and_collected_options(job_of):
    cfg = job_of("--domain", "a=x", "--domain", "b=y", "--text-field", "content",
                 "--max-model-len", "128", "--enforce-eager", "-q", "--json")
    assert cfg.domains == [DomainSpec("a", "x", "content"), DomainSpec("b", "y", "content")]
    assert cfg.engine_options == {"max_model_len": 128, "enforce_eager": True}
    assert cfg.progress is False


def test_unknown_config_key_is_a_one_line_error(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("bogus = 1\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["cache-teacher", "--config", str(path)])
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == (f"error: {path}: unknown option 'bogus'; see "
                                "`ddk cache-teacher --help` for the option names")


def test_target_options_reach_the_job(job_of, tmp_path):
    assert job_of("--target", "sampled", "--samples", "16").target == "sampled"
    assert job_of("--target", "sampled", "--samples", "16").samples == 16
    cfg = job_of()
    assert (cfg.target, cfg.samples) == ("topk", None)
    path = tmp_path / "job.toml"
    path.write_text('target = "sampled"\nsamples = 24\n', encoding="utf-8")
    cfg = job_of("--config", str(path))
    assert (cfg.target, cfg.samples) == ("sampled", 24)


@pytest.mark.parametrize("args,message", [
    (["--samples", "16"], ("error: --samples 16 applies to --target sampled only; add "
                          "--target sampled, or drop --samples")),
    (["--target", "sampled", "--backend", "vllm"],
     ("error: --target sampled draws from the teacher's full distribution, which the vLLM "
     "backend does not return (only top log-probs); use --backend transformers, or "
     "--target topk with vLLM")),
])
def test_target_option_errors_are_one_line(args, message, tmp_path):
    r = CliRunner().invoke(cli, ["cache-teacher", "-o", str(tmp_path / "c"), *args])
    assert r.exit_code == 1
    assert r.stderr.strip() == message
    assert not (tmp_path / "c").exists()
