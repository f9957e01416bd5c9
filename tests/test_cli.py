from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ray_cora.cli import main
from ray_cora.configs.demo import DemoConfig
from ray_cora.configs.validate import ValidateConfig
from ray_cora.errors import ConfigError


def test_config_precedence_defaults_yaml_cli(tmp_path):
    yaml_file = tmp_path / "demo.yaml"
    yaml_file.write_text("k: 7\nbatch-size: 16\nout: /tmp/x\n")
    config = DemoConfig.load(str(yaml_file), {"k": "3"})
    assert (config.k, config.batch_size, config.out, config.encoder) == (3, 16, "/tmp/x", "muse")
    with pytest.raises(Exception):
        config.k = 5  # frozen


@pytest.mark.parametrize("content, message", [
    ("kk: 3\n", "unknown option 'kk'"),
    ("k: zero\n", "option 'k'"),
    ("k: [1,\n", "demo.yaml:"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_yaml_config_is_one_clear_error(tmp_path, content, message):
    yaml_file = tmp_path / "demo.yaml"
    yaml_file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        DemoConfig.load(str(yaml_file))


def test_every_option_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = capsys.readouterr().out
    for name in DemoConfig.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_unknown_encoder_fails_before_any_work(capsys):
    assert main(["demo", "--encoder", "nope", "--out", "/nonexistent/should-not-be-created"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown encoder spec 'nope'" in err and "muse" in err


def test_validate_reports_bad_record_by_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("1\tfine\tT\n2\tbroken row\n3\talso fine\tT\n", encoding="utf-8")
    assert main(["validate", "--input", str(corpus), "--lang", "en"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ray-cora validate: error: {corpus}:2: expected 3 tab-separated columns "
                   "(id, text, title), found 2 (fix the record, or pass --on-bad-record skip to "
                   "quarantine it and go on)")


def test_validate_skip_quarantines_and_keeps_counting(tmp_path, capsys):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("1\tfine\tT\n2\tbroken row\n3\talso fine\tT\n", encoding="utf-8")
    assert main(["validate", "--input", str(corpus), "--lang", "en", "--on-bad-record", "skip"]) == 0
    out = capsys.readouterr().out
    assert "2 passages records" in out and "skipped 1 malformed records" in out
    quarantined = [json.loads(l) for l in (tmp_path / "corpus.tsv.quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["raw"]) for q in quarantined] == [(2, "2\tbroken row")]


def test_list_option_and_validation_of_choices():
    with pytest.raises(ConfigError, match="option 'on_bad_record'"):
        ValidateConfig.load(overrides={"input": "x", "on_bad_record": "ignore"})


def test_python_dash_m_lists_jobs():
    result = subprocess.run([sys.executable, "-m", "ray_cora", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "demo" in result.stdout and "validate" in result.stdout


def test_grouped_subcommands_parse_and_run(monkeypatch, capsys, tmp_path):
    """Jobs named "group leaf" (``ray-cora evaluate qa``) become nested subcommands."""
    import ray_cora.cli as cli

    calls = []
    monkeypatch.setitem(cli.JOBS, "tools check", cli.Job(ValidateConfig, "ray_cora.cli:load_driver",
                                                         "a grouped test job"))
    monkeypatch.setattr(cli, "load_driver", lambda job: calls.append(job.driver) or (
        lambda config: calls.append(config)))
    data = tmp_path / "q.jsonl"
    data.write_text("")
    assert cli.run_job("tools check", ["--input", str(data)]) == 0
    assert isinstance(calls[-1], ValidateConfig) and calls[-1].input == str(data)
    capsys.readouterr()
    assert cli.main(["tools"]) == 2  # a bare group prints its own help
    out = capsys.readouterr().out
    assert "check" in out and "a grouped test job" in out


@pytest.mark.parametrize("job", ["retrieve", "evaluate all"])
def test_short_alias_k_is_in_help_and_parses(job, capsys):
    """A field declares a short alias with json_schema_extra={"short": "-k"}; `-k 7` means `--k 7`."""
    from ray_cora.cli import build_parser
    from ray_cora.configs.arguments import config_from_args
    from ray_cora.configs.evaluate import EvaluateAllConfig
    from ray_cora.configs.retrieve import RetrieveConfig

    with pytest.raises(SystemExit):
        main([*job.split(), "--help"])
    assert "-k K, --k K" in capsys.readouterr().out
    required = ["--index", "i", "--questions", "q", "--dataset", "jsonl", "--out", "o"]
    config_cls = RetrieveConfig if job == "retrieve" else EvaluateAllConfig
    args = build_parser().parse_args([*job.split(), *required, "-k", "7"])
    assert config_from_args(config_cls, args).k == 7
    args = build_parser().parse_args([*job.split(), *required])
    assert config_from_args(config_cls, args).k == 100


def test_a_bad_short_alias_is_a_clear_error():
    import argparse

    from pydantic import Field

    from ray_cora.configs.arguments import add_config_arguments
    from ray_cora.configs.base import JobConfig

    class Bad(JobConfig):
        k: int = Field(1, json_schema_extra={"short": "--kk"})

    with pytest.raises(ConfigError, match="field 'k': short alias '--kk' must be one dash and one letter"):
        add_config_arguments(argparse.ArgumentParser(), Bad)


@pytest.mark.parametrize("argv, message", [
    (["pivot", "run", "--db", "db", "--questions", "q.jsonl", "--out", "o", "--threshold", "nan"],
     "option 'threshold': Input should be a finite number (got 'nan')"),
    (["evaluate", "qa", "--mode", "xor", "--dataset", "xor", "--gold", "g.jsonl", "--predictions", "p.jsonl",
      "--out", "o", "--lang", "ja", "--langs", "ja,ko"], "pass either --lang"),
    (["embed", "--passages", "p.jsonl", "--out", "o", "--num-cpus", "1", "--actor-cpus", "4"],
     "--actor-cpus 4 is more than the 1 CPUs of --num-cpus"),
    (["retrieve", "--index", "i", "--questions", "q", "--dataset", "xor", "--out", "o", "--num-cpus", "1",
      "--search-actor-cpus", "2"], "--search-actor-cpus 2 is more than the 1 CPUs"),
])
def test_contradictory_or_meaningless_options_are_one_line_naming_the_option(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


class _RemoteFailure(Exception):
    """Stands for a Ray error that carries a worker's traceback as text only (``ActorDiedError``,
    Ray Train's ``TrainingFailedError``): the worker's error class did not survive."""


def test_a_users_error_still_wrapped_when_it_reaches_the_cli_is_one_line_and_a_bug_is_not(monkeypatch, capsys,
                                                                                           tmp_path):
    import ray_cora.cli as cli

    data = tmp_path / "q.jsonl"
    data.write_text("")
    remote = ("Traceback (most recent call last):\n  File \"worker.py\", line 3, in train_loop\n"
              f"ray_cora.errors.BadRecordError: {data}:4: field 'label' must be 0 or 1 (fix the record)\n")

    def driver(error):
        def run(config):
            raise error
        return run

    monkeypatch.setattr(cli, "load_driver", lambda job: driver(_RemoteFailure(remote)))
    assert cli.main(["validate", "--input", str(data)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"ray-cora validate: error: {data}:4: field 'label' must be 0 or 1 (fix the record)"]
    monkeypatch.setattr(cli, "load_driver", lambda job: driver(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["validate", "--input", str(data)])
