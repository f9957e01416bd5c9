"""The cluster configs in cluster/ are valid for the tools that read them, offline."""

from __future__ import annotations

import copy
import functools
import gzip
import re
import shlex

import jsonschema
import pytest
import ray
import yaml

from ray_cora.cli import JOBS, build_parser
from ray_cora.configs.arguments import config_from_args
from ray_cora.errors import ConfigError
from tests.support import REPO_ROOT

CLUSTER = REPO_ROOT / "cluster"
REPO = CLUSTER.parent
CRDS = REPO_ROOT / "tests" / "cluster_schemas"  # KubeRay's CRDs, vendored (see its README.md)
KUBERAY_VERSION = "1.5.1"
KUBERAY_MANIFESTS = ["kuberay/raycluster.yaml", "kuberay/rayjob-embed.yaml", "kuberay/rayservice.yaml"]
AWS_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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


def test_aws_nodes_run_the_project_image_on_a_current_ami_with_a_role_each():
    from ray.autoscaler._private.aws.config import DEFAULT_AMI

    config = _yaml("aws.yaml")
    # Ray, Python 3.11, CUDA torch and faiss-gpu come from the image the KubeRay pods run; nothing
    # is pip-installed on the hosts (Ray's default AMI could not: Python 3.6, CUDA 11.2).
    images = {c["image"] for name in KUBERAY_MANIFESTS for c in _pod_containers(_yaml(name))}
    assert config["docker"]["image"] in images
    assert not any("pip" in c for c in config.get("setup_commands", []) + config.get("initialization_commands", []))
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        # An empty ImageId (or latest_dlami) makes Ray fill in its default AMI (ray's _check_ami).
        assert node.get("ImageId", "").lower() not in ("", "latest_dlami", *DEFAULT_AMI.values()), name
        # Ray gives only the head a default role; a worker without one has no S3 credentials.
        if name != config["head_node_type"]:
            assert node["IamInstanceProfile"], name
    # Credentials never come from the launching shell (they would be copied onto every node).
    assert not any(secret in (CLUSTER / "aws.yaml").read_text() for secret in AWS_SECRETS)


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


def _pod_templates(manifest: dict) -> list[dict]:
    spec = manifest["spec"]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
               "RayService": spec.get("rayClusterConfig")}[manifest["kind"]]
    return [group["template"] for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])]


def _pod_containers(manifest: dict) -> list[dict]:
    return [c for template in _pod_templates(manifest) for c in template["spec"]["containers"]]


@functools.cache
def _crd_schema(kind: str) -> dict:
    """The ``v1`` openAPIV3Schema of KubeRay's CRD for ``kind``, made strict as ``kubectl apply``'s
    server-side field validation is: a field the schema does not name is an error, not dropped."""
    for path in CRDS.glob("ray.io_*.yaml.gz"):
        crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=yaml.CSafeLoader)
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            return _strict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no vendored CRD for {kind} in {CRDS}")


def _strict(schema):
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in strict and "additionalProperties" not in strict
            and not strict.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


def _schema_errors(manifest: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(_crd_schema(manifest["kind"]))
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(manifest))


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_manifests_validate_against_the_crds_of_the_named_kuberay(name):
    assert f"KubeRay >= {KUBERAY_VERSION}" in (CLUSTER / "README.md").read_text()
    assert f"v{KUBERAY_VERSION}" in (CRDS / "README.md").read_text()
    errors = _schema_errors(_yaml(name))
    assert not errors, "\n".join(errors[:10])


def test_crd_validation_catches_a_misspelt_field_and_a_wrong_type():
    manifest = _yaml("kuberay/raycluster.yaml")
    manifest["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    manifest["spec"]["workerGroupSpecs"][1]["maxReplicas"] = "eight"
    errors = _schema_errors(manifest)
    assert any("minReplica" in e and "additional" in e.lower() for e in errors), errors
    assert any(e.startswith("spec.workerGroupSpecs.1.maxReplicas") for e in errors), errors


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_pods_can_reach_s3_by_their_service_account_or_optional_keys(name):
    account = _yaml("kuberay/serviceaccount.yaml")
    assert account["kind"] == "ServiceAccount"
    for template in _pod_templates(_yaml(name)):
        # IRSA / Pod Identity bind an IAM role to this account; static keys stay an optional secret.
        assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
        for container in template["spec"]["containers"]:
            assert {"secretRef": {"name": "ray-cora-s3", "optional": True}} in container["envFrom"]
            assert not any(e.get("name") in AWS_SECRETS and "value" in e for e in container.get("env", []))


def test_rayjob_entrypoint_exists_and_its_options_parse():
    _check_entrypoint(_yaml("kuberay/rayjob-embed.yaml")["spec"]["entrypoint"])


def test_entrypoint_check_rejects_a_wrong_option():
    with pytest.raises(SystemExit):
        _check_entrypoint("python jobs/embed_corpus.py --passages p --out o --no-such-option 1")
    with pytest.raises(ConfigError):
        _check_entrypoint("python jobs/embed_corpus.py --passages p --out o --index-type lsh")


def test_runtime_env_examples_are_valid_and_install_nothing_from_an_empty_folder():
    from ray.runtime_env import RuntimeEnv

    image = RuntimeEnv(**_yaml("runtime_env.yaml"))
    # On the project image: nothing to install, the uploaded checkout first on PYTHONPATH.
    assert image["working_dir"] == "." and ".venv" in image["excludes"]
    assert not {"pip", "uv", "conda"} & set(image.keys())
    for device, other in (("gpu", "cpu"), ("cpu", "gpu")):
        env = RuntimeEnv(**_yaml(f"runtime_env.pip-{device}.yaml"))
        (package,) = env["pip"]["packages"]
        # pip runs in an empty exec_cwd: the project is named by the node's copy of the working dir,
        # installed (not editable) with exactly one faiss extra.
        assert package == "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" + f"[{device}]"
        assert env["working_dir"] == "." and f"[{other}]" not in package
    for name in ("runtime_env.yaml", "runtime_env.pip-gpu.yaml", "runtime_env.pip-cpu.yaml"):
        # A runtime env is stored in the GCS and shown in the dashboard: no credentials in it.
        assert "env_vars" not in _yaml(name) and not any(s in (CLUSTER / name).read_text() for s in AWS_SECRETS)


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
    # fails `serve deploy`); the shard groups are the Retriever's actors, sized by the args.
    assert set(configured) == built_names == set(deployment_names(ServeAppOptions.model_validate(app["args"])))
    assert set(DEPLOYMENTS) <= built_names
    (retriever,) = [d for d in built.deployments if d.name == "Retriever"]
    groups = retriever._deployment_config.deployment_actors
    copies = app["args"].get("shard_group_copies", 1)
    assert [g.name for g in groups] == [f"IndexShardGroup{g}-{c}" if copies > 1 else f"IndexShardGroup{g}"
                                        for g in range(app["args"]["shard_groups"]) for c in range(copies)]
    assert len(groups) > 1 and all(g.actor_options["memory"] > 0 for g in groups)
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


def test_rayservice_uses_the_settings_kuberay_reads_and_fits_its_index_replicas():
    from ray._private.ray_constants import DEFAULT_OBJECT_STORE_MEMORY_PROPORTION

    manifest = _yaml("kuberay/rayservice.yaml")
    spec = manifest["spec"]
    # KubeRay no longer reads these (rayservice_types.go: "Deprecated: This field is not used
    # anymore"); the initializing timeout is an annotation, a Go duration or whole seconds.
    assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(spec)
    timeout = manifest["metadata"]["annotations"]["ray.io/initializing-timeout"]
    assert re.fullmatch(r"[1-9]\d*|(\d+(\.\d+)?(h|m|s))+", timeout)
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    assert serve_config["http_options"] == _yaml("serve_config.yaml")["http_options"]
    assert serve_config["http_options"]["request_timeout_s"] > 0
    # Ray's `memory` resource is the pod's memory less the object store; each IndexShardGroup
    # replica (FAISS shards in its heap) must fit in one index pod next to it.
    (group,) = [g for g in spec["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "index"]
    (container,) = group["template"]["spec"]["containers"]
    pod_memory = _k8s_bytes(container["resources"]["limits"]["memory"])
    object_store = group["rayStartParams"].get("object-store-memory")
    object_store = int(object_store) if object_store else pod_memory * DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    (app,) = serve_config["applications"]
    largest = app["args"]["shard_group_memory"]
    assert pod_memory - object_store >= largest
    # Every copy of every group is an actor of that size: the group's smallest size holds them all.
    per_pod = (pod_memory - object_store) // largest
    actors = app["args"]["shard_groups"] * app["args"].get("shard_group_copies", 1)
    assert group["minReplicas"] * per_pod >= actors and group["replicas"] >= group["minReplicas"]
    assert group["maxReplicas"] * per_pod >= 2 * actors  # a code redeploy starts new actors before the old go


def _k8s_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)
