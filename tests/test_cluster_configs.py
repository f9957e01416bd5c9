"""The cluster configs in cluster/ are valid for the tools that read them, offline."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import ray
import yaml

from ray_cora.cli import JOBS, build_parser
from ray_cora.configs.arguments import config_from_args
from ray_cora.errors import ConfigError
from tests.support import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
REPO = CLUSTER.parent


def _yaml(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _job_name_for(script: str) -> str:
    """The job a jobs/*.py entrypoint runs (each one is `run_job("<name>")`)."""
    source = (REPO / script).read_text()
    match = re.search(r'run_job\("([^"]+)"\)', source)
    assert match, f"{script} does not call run_job"
    return match.group(1)


def _check_entrypoint(entrypoint: str) -> None:
    """The script exists and its options parse into the job's config model."""
    words = shlex.split(entrypoint)
    assert words[0] == "python" and (REPO / words[1]).is_file(), f"no such entrypoint: {words[1]}"
    name = _job_name_for(words[1])
    args = build_parser().parse_args([*name.split(" "), *words[2:]])
    config_from_args(JOBS[name].config, args)


def test_aws_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml("aws.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU")}
    assert gpu_types and all(t["max_workers"] > t["min_workers"] == 0 for t in gpu_types.values())
    # Token authentication stays on for every node, with the token mounted from the user's machine.
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert all("RAY_AUTH_MODE=token" in c for c in commands if "ray start" in c)
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("[gpu]" in c for c in config["setup_commands"])
    assert any(f"=={ray.__version__}" in c for c in config["setup_commands"])


def test_aws_launcher_schema_check_catches_a_typo():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _yaml("aws.yaml")
    config["available_node_types"]["worker.cpu"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob-embed.yaml"])
def test_kuberay_manifests_keep_auth_on_and_request_gpus(name):
    manifest = _yaml(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups and all(g["maxReplicas"] >= g["minReplicas"] for g in spec["workerGroupSpecs"])


def test_rayjob_entrypoint_exists_and_its_options_parse():
    _check_entrypoint(_yaml("kuberay/rayjob-embed.yaml")["spec"]["entrypoint"])


def test_entrypoint_check_rejects_a_wrong_option():
    with pytest.raises(SystemExit):
        _check_entrypoint("python jobs/embed_corpus.py --passages p --out o --no-such-option 1")
    with pytest.raises(ConfigError):
        _check_entrypoint("python jobs/embed_corpus.py --passages p --out o --index-type lsh")


def test_runtime_env_example_is_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**_yaml("runtime_env.yaml"))
    assert env["working_dir"] == "." and ".venv" in env["excludes"]


def test_dockerfile_uses_the_installed_ray_version():
    assert f"rayproject/ray:{ray.__version__}-" in (CLUSTER / "Dockerfile").read_text()


def _serve_apps() -> list[dict]:
    from ray.serve.schema import ServeDeploySchema

    config = _yaml("serve_config.yaml")
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks before sending it
    return config["applications"]


def test_serve_config_is_a_valid_deploy_config_for_the_real_app(monkeypatch):
    from ray.serve._private.build_app import build_app as serve_build  # what `serve build` runs
    from ray.serve._private.utils import import_attr

    from ray_cora.configs.serve import ServeAppOptions
    from ray_cora.serve.app import DEPLOYMENTS, deployment_names

    (app,) = _serve_apps()
    builder = import_attr(app["import_path"])
    # The app refuses to start without the API key its args name; give it one to build the graph.
    monkeypatch.setenv(app["args"]["api_key_env"], "test-key")
    built = serve_build(builder(app["args"]), name=app["name"])
    built_names = {d.name for d in built.deployments}
    configured = {d["name"]: d for d in app["deployments"]}
    # Every deployment the app makes is configured (an entry for a deployment it does not make
    # fails `serve deploy`), including one IndexShardGroup<g> per shard group.
    assert set(configured) == built_names == set(deployment_names(ServeAppOptions.model_validate(app["args"])))
    assert set(DEPLOYMENTS) <= built_names
    groups = sorted(n for n in built_names if n.startswith("IndexShardGroup"))
    assert groups == [f"IndexShardGroup{g}" for g in range(app["args"]["shard_groups"])] and len(groups) > 1
    assert all(configured[g]["ray_actor_options"]["memory"] > 0 for g in groups)
    for name, deployment in configured.items():
        assert deployment["autoscaling_config"]["max_replicas"] > deployment["autoscaling_config"]["min_replicas"] >= 1
    for name in ("Retriever", "Generator"):  # the GPU models, batched
        deployment = configured[name]
        assert deployment["ray_actor_options"]["num_gpus"] >= 1
        assert deployment["max_ongoing_requests"] > deployment["user_config"]["max_batch_size"]
    assert _public_http_needs_api_key(_yaml("serve_config.yaml"))


def _public_http_needs_api_key(config: dict) -> bool:
    public = config["http_options"]["host"] not in ("127.0.0.1", "localhost")
    return not public or all(app["args"].get("api_key_env") for app in config["applications"])


def test_serve_config_args_are_checked_like_the_app_checks_them():
    from ray_cora.configs.serve import ServeAppOptions

    (app,) = _serve_apps()
    ServeAppOptions.model_validate(app["args"])
    with pytest.raises(ValueError, match="max_k"):
        ServeAppOptions.model_validate({**app["args"], "default_k": 10, "max_k": 5})


def test_rayservice_serves_the_same_app_with_auth_on():
    manifest = _yaml("kuberay/rayservice.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    spec = manifest["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["enableInTreeAutoscaling"] is True
    assert yaml.safe_load(spec["serveConfigV2"])["applications"] == _serve_apps()
    # Every container gets the API key secret the app's api_key_env names.
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "ray-cora-api-key"}} in container["envFrom"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"]
               for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])
