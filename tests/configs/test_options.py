"""One name and one help text per option: the shared option groups (ray_cora/configs/options.py),
the old names kept as aliases (YAML, model_validate, command line), and what they must not change
(saved config dicts, resume checks)."""

from __future__ import annotations

import argparse

import pytest
import yaml
from pydantic import Field

from ray_cora.cli import JOBS, build_parser, main
from ray_cora.configs import (
    ActorPoolOptions,
    DecodingOptions,
    DemoConfig,
    EmbedConfig,
    GenerateConfig,
    IndexOptions,
    IterateConfig,
    PassagesConfig,
    PivotBuildConfig,
    PivotRunConfig,
    PivotTrainRerankerConfig,
    TaskOptions,
    TrainRunConfig,
    WikidataLabelsConfig,
)
from ray_cora.configs.arguments import add_config_arguments, config_from_args
from ray_cora.configs.base import JobConfig, aliases, option_aliases
from ray_cora.errors import ConfigError
from ray_cora.evaluate.all import generate_config

# (job, its config, required options, old name, new name, a value)
RENAMED = [
    ("embed", EmbedConfig, {"passages": "p", "out": "o"}, "concurrency", "actors", 3),
    ("generate", GenerateConfig, {"model": "m", "retrieval": ["r"], "out": "o"}, "concurrency", "actors", 3),
    ("demo", DemoConfig, {}, "num_actors", "actors", 2),
    ("pivot build", PivotBuildConfig, {"questions": "q", "out": "o"}, "concurrency", "actors", 4),
    ("pivot run", PivotRunConfig, {"db": "d", "questions": "q", "out": "o"}, "concurrency", "actors", 4),
    ("wikidata labels", WikidataLabelsConfig, {"dump": "d", "langs": ["en"], "out": "o"}, "concurrency", "tasks", 5),
    ("passages", PassagesConfig, {"inputs": ["en=x"], "out": "o"}, "num_cpus_per_task", "task_cpus", 0.25),
]
IDS = [f"{job}:{old}" for job, _, _, old, _, _ in RENAMED]
OLD_NAMES = ("concurrency", "num_actors", "num_cpus_per_task")


def _argv(job: str, required: dict, name: str, value) -> list[str]:
    words = job.split()
    for key, given in required.items():
        words += ["--" + key.replace("_", "-"), ",".join(given) if isinstance(given, list) else str(given)]
    return [*words, "--" + name.replace("_", "-"), str(value)]


@pytest.mark.parametrize("job, cls, required, old, new, value", RENAMED, ids=IDS)
def test_the_alias_and_the_name_give_the_same_config(tmp_path, job, cls, required, old, new, value):
    by_name = cls.load(overrides={**required, new: value})
    by_alias = cls.load(overrides={**required, old: value})
    assert by_alias == by_name and getattr(by_alias, new) == value
    assert cls.model_validate({**required, old: value}) == by_name
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(yaml.safe_dump({**required, old.replace("_", "-"): value}))
    assert cls.load(str(yaml_file)) == by_name
    # Saved dicts (job-settings files, manifests) use the new name only: a rerun with the old
    # name is the same settings.
    saved = by_alias.to_dict()
    assert saved == by_name.to_dict() and saved[new] == value and old not in saved
    assert cls.model_validate(saved) == by_name


@pytest.mark.parametrize("job, cls, required, old, new, value", RENAMED, ids=IDS)
def test_both_flags_parse_on_the_command_line(job, cls, required, old, new, value):
    parser = build_parser()
    by_name = config_from_args(cls, parser.parse_args(_argv(job, required, new, value)))
    by_alias = config_from_args(cls, parser.parse_args(_argv(job, required, old, value)))
    assert by_alias == by_name and getattr(by_name, new) == value


@pytest.mark.parametrize("job, cls, required, old, new, value", RENAMED, ids=IDS)
def test_giving_both_names_is_one_clear_error(tmp_path, capsys, job, cls, required, old, new, value):
    new_flag, old_flag = "--" + new.replace("_", "-"), "--" + old.replace("_", "-")
    argv = [*_argv(job, required, new, value), old_flag, str(value)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{new_flag} and {old_flag} name one option ({old_flag} is an alias of {new_flag})" in err
    with pytest.raises(ConfigError, match=f"'{new}' and '{old}' name one option"):
        cls.load(overrides={**required, new: value, old: value})
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(yaml.safe_dump({**required, new: value, old: value}))
    with pytest.raises(ConfigError, match=f"job.yaml.*'{new}' and '{old}' name one option"):
        cls.load(str(yaml_file))
    with pytest.raises(ValueError, match=f"'{new}' and '{old}' name one option"):
        cls.model_validate({**required, new: value, old: value})


def test_the_command_line_overrides_an_alias_in_yaml(tmp_path):
    yaml_file = tmp_path / "embed.yaml"
    yaml_file.write_text("passages: p\nout: o\nconcurrency: 8\n")
    assert EmbedConfig.load(str(yaml_file)).actors == 8
    assert EmbedConfig.load(str(yaml_file), {"actors": "2"}).actors == 2
    args = build_parser().parse_args(["embed", "--config", str(yaml_file), "--actors", "2"])
    assert config_from_args(EmbedConfig, args).actors == 2


def test_help_shows_one_help_text_and_lists_the_alias(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    description = EmbedConfig.model_fields["actors"].description
    assert out.count(description) == 1
    assert "--concurrency ACTORS alias of --actors" in out and "--num-actors ACTORS alias of --actors" in out
    assert "actor pool options: --actors ACTORS" in out and "FAISS index options: --index-type" in out
    with pytest.raises(SystemExit):
        main(["passages", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--num-cpus-per-task CPUS alias of --task-cpus" in out
    assert out.count(TaskOptions.model_fields["task_cpus"].description) == 1


def test_every_option_of_every_job_has_a_description():
    missing = [f"{job.config.__name__}.{name}" for job in JOBS.values()
               for name, field in job.config.model_fields.items() if not (field.description or "").strip()]
    assert missing == []


def test_each_option_is_declared_once():
    """No job keeps an old name as an option of its own; an option a group declares has the
    group's help text, bounds and aliases in every job (a job may change only the default)."""
    groups = (ActorPoolOptions, TaskOptions, IndexOptions, DecodingOptions, TrainRunConfig)
    for job in JOBS.values():
        cls = job.config
        assert not set(OLD_NAMES) & set(cls.model_fields), cls.__name__
        for group in groups:
            if not issubclass(cls, group):
                continue
            for name, field in group.model_fields.items():
                mine = cls.model_fields[name]
                assert (mine.description, mine.metadata, mine.validation_alias, option_aliases(mine)) == (
                    field.description, field.metadata, field.validation_alias, option_aliases(field)), (cls, name)
    # the defaults a job keeps: its own where they differ from the group's
    assert (EmbedConfig.model_fields["actor_cpus"].default, DemoConfig.model_fields["actor_cpus"].default) == (1.0, 0.5)
    assert (WikidataLabelsConfig.model_fields["tasks"].default, PassagesConfig.model_fields["tasks"].default) == (2, None)
    assert WikidataLabelsConfig.model_fields["task_cpus"].default == 0.5
    assert PassagesConfig.model_fields["task_cpus"].default == 1.0


def test_the_index_group_gives_embed_and_pivot_build_the_same_index_spec():
    embed = EmbedConfig.load(overrides={"passages": "p", "out": "o", "index_type": "hnsw", "hnsw_m": "16"})
    pivot = PivotBuildConfig.load(overrides={"questions": "q", "out": "o", "index_type": "hnsw", "hnsw_m": "16"})
    assert embed.index_spec() == pivot.index_spec() and pivot.index_spec().hnsw_m == 16


def test_reranker_training_takes_the_ray_train_run_options():
    assert issubclass(PivotTrainRerankerConfig, TrainRunConfig)
    required = {"model": "hf:x", "pairs": ["p.tsv"], "out": "o"}
    config = PivotTrainRerankerConfig.load(overrides={**required, "num_workers": "3", "cpus_per_worker": "1",
                                                      "on_bad_record": "skip"})
    assert (config.num_workers, config.cpus_per_worker, config.use_gpu, config.seed, config.on_bad_record) == (
        3, 1.0, False, 0, "skip")
    for name in ("num_workers", "cpus_per_worker", "use_gpu", "seed"):
        assert PivotTrainRerankerConfig.model_fields[name].description == TrainRunConfig.model_fields[name].description
    with pytest.raises(ConfigError, match="pivot train-reranker does not use max_failures"):
        PivotTrainRerankerConfig.load(overrides={**required, "max_failures": "5"})
    assert "--max-failures" in (PivotTrainRerankerConfig.__doc__ or "")


def test_iterate_stage_options_accept_the_old_names():
    """jobs/configs/*.yaml and older iterate configs write `embed: {concurrency: 8}`."""
    base = {"out": "o", "mdpr_init": "tiny", "mgen_init": "tiny"}
    old = IterateConfig.model_validate({**base, "embed": {"concurrency": 8}, "generate": {"concurrency": 2}})
    new = IterateConfig.model_validate({**base, "embed": {"actors": 8}, "generate": {"actors": 2}})
    assert old == new and old.embed == {"actors": 8} and old.to_dict() == new.to_dict()
    assert old.stage_config("embed", passages="p", out="o").actors == 8
    with pytest.raises(ValueError, match="embed: 'actors' and 'concurrency' name one option"):
        IterateConfig.model_validate({**base, "embed": {"actors": 8, "concurrency": 8}})


def test_evaluate_all_hands_its_generate_actors_to_generate():
    from ray_cora.configs import EvaluateAllConfig

    config = EvaluateAllConfig.load(overrides={"index": "i", "questions": "q", "dataset": "jsonl", "out": "o",
                                               "generator": "g", "generate_actors": "3"})
    assert generate_config(config, "r", "p").actors == 3


def test_a_bad_alias_is_a_clear_error():
    class Clash(JobConfig):
        actors: int = Field(1, description="Actors", **aliases("actors", "threads"))
        threads: int = Field(1, description="Threads")

    with pytest.raises(ConfigError, match="alias 'threads' is the name of another option of Clash"):
        add_config_arguments(argparse.ArgumentParser(), Clash)

    class Twice(JobConfig):
        actors: int = Field(1, description="Actors", **aliases("actors", "concurrency"))
        tasks: int = Field(1, description="Tasks", **aliases("tasks", "concurrency"))

    with pytest.raises(ConfigError, match="alias 'concurrency' is an alias of another option of Twice too"):
        add_config_arguments(argparse.ArgumentParser(), Twice)
