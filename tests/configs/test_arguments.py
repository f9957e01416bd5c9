"""The command line of every job: overrides merge into the YAML, and --help tells each option's values."""

from __future__ import annotations

import typing

import pytest
import yaml

from ray_cora.cli import JOBS, build_parser
from ray_cora.configs.arguments import config_from_args, literal_choices
from ray_cora.configs.base import option_forms


def _load(argv: list[str]):
    args = build_parser().parse_args(argv)
    return config_from_args(JOBS[args.job_name].config, args)


def test_a_mapping_option_on_the_command_line_merges_into_the_yaml(tmp_path):
    config_file = tmp_path / "iterate.yaml"
    config_file.write_text(yaml.safe_dump({
        "out": str(tmp_path / "out"), "mdpr_init": "tiny", "mgen_init": "tiny",
        "mdpr": {"use_gpu": True, "num_workers": 8, "epochs": 3},
        "mgen": {"epochs": 2}}))
    config = _load(["iterate", "--config", str(config_file), "--mdpr", '{"epochs": 1}', "--mgen", "{}"])
    # Only the key given changes; what the YAML said about GPUs and workers stays.
    assert config.mdpr == {"use_gpu": True, "num_workers": 8, "epochs": 1}
    assert config.mgen == {"epochs": 2}
    # Without a YAML mapping to merge into, the command line's mapping is the whole option.
    alone = _load(["iterate", "--out", "o", "--mdpr-init", "tiny", "--mgen-init", "tiny", "--mdpr", '{"epochs": 1}'])
    assert alone.mdpr == {"epochs": 1}


def test_a_bad_mapping_on_the_command_line_is_still_one_line_naming_the_option(tmp_path):
    from ray_cora.errors import ConfigError

    config_file = tmp_path / "iterate.yaml"
    config_file.write_text(yaml.safe_dump({"out": "o", "mdpr_init": "tiny", "mgen_init": "tiny",
                                           "mdpr": {"epochs": 3}}))
    with pytest.raises(ConfigError, match="mdpr"):
        _load(["iterate", "--config", str(config_file), "--mdpr", "{epochs: 1"])


def _job_parsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "job")
    for name, job in JOBS.items():
        group, _, leaf = name.rpartition(" ")
        job_parser = sub.choices[group] if group else sub.choices[name]
        if group:
            job_parser = next(a for a in job_parser._actions if a.dest == "subjob").choices[leaf]
        yield name, job, job_parser


@pytest.mark.parametrize("name", list(JOBS))
def test_help_gives_every_option_a_description_and_its_values(name):
    job_name, job, job_parser = next(item for item in _job_parsers() if item[0] == name)
    actions = {a.dest: a for a in job_parser._actions}
    for field_name, field in job.config.model_fields.items():
        action = actions[field_name]
        assert action.help and action.help.strip() and not action.help.startswith(" ("), \
            f"{job_name} --{field_name.replace('_', '-')} has no help text"
        choices = literal_choices(field.annotation)
        if choices:
            assert action.metavar == "{" + ",".join(map(str, choices)) + "}"
        if option_forms(field):
            assert "forms: muse | hf:" in action.help


def test_encoder_options_list_the_spec_forms():
    fields = [(name, f) for name, job in JOBS.items() for f_name, f in job.config.model_fields.items()
              if f_name in ("encoder", "query_encoder")]
    assert fields and all(option_forms(f) for _, f in fields)
    assert literal_choices(typing.Literal["a", "b"]) == ("a", "b")
