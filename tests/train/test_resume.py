"""Ray Train checkpoints in object storage, and re-running a training job: resume, then skip.

One tiny mDPR run into ``s3://`` (the SeaweedFS fixture), stopped right after its first checkpoint;
the same command again resumes from that checkpoint in the bucket and publishes an ``hf:`` model
there that loads from s3; a third run finds the model published and trains nothing.
"""

from __future__ import annotations

import json
import time

import pytest

from ray_cora import faults
from ray_cora.encoders import load_encoder
from ray_cora.errors import ConfigError
from ray_cora.faults import FaultPlan
from tests.support import dpr_rows


def _keys(client, bucket: str, prefix: str) -> dict[str, str]:
    """Every object under ``prefix`` (relative key → ETag)."""
    out, token = {}, None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/",
                                      **({"ContinuationToken": token} if token else {}))
        out.update({o["Key"][len(prefix) + 1:]: o["ETag"] for o in page.get("Contents", [])})
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _checkpoints(keys: dict[str, str]) -> list[str]:
    return sorted({k.split("/")[1] for k in keys if k.startswith("ray-train/step-") and k.endswith("/state.pt")})


def test_rerun_check_skips_a_published_model_and_refuses_changed_training_options(tmp_path, capsys):
    from ray_cora import storage
    from ray_cora.configs.train import TrainMGENConfig
    from ray_cora.train.jobs import RUN_CONFIG, _training_options, check_rerun

    config = TrainMGENConfig(train=["x.jsonl"], out=str(tmp_path / "out"), init="t5", epochs=2)
    assert check_rerun(config, "train-mgen") is None  # nothing there yet: train
    storage.write_bytes(str(tmp_path / "out" / RUN_CONFIG), json.dumps(_training_options(config)).encode())
    assert check_rerun(config.model_copy(update={"num_workers": 4, "max_failures": 0}), "train-mgen") is None
    with pytest.raises(ConfigError, match=r"lr: 3e-05 → 0.001; top_k: 15 → 3\).*new --out"):
        check_rerun(config.model_copy(update={"top_k": 3, "lr": 1e-3}), "train-mgen")
    writer = storage.ArtifactWriter(str(tmp_path / "out" / "model"), kind="mgen-seq2seq")
    writer.write_bytes("config.json", b"{}")
    writer.commit({"steps": 10})
    done = check_rerun(config, "train-mgen")
    assert done["steps"] == 10 and "train-mgen: already trained" in capsys.readouterr().out


@pytest.mark.slow
def test_s3_checkpoints_rerun_resumes_then_a_finished_run_is_not_retrained(ray_local, s3_env, tiny_bert, tmp_path,
                                                                           capsys):
    from ray_cora.configs.train import TrainMDPRConfig
    from ray_cora.train.jobs import train_mdpr

    client, bucket = s3_env["client"], s3_env["bucket"]
    prefix = f"train-resume-{time.time_ns()}"
    train = tmp_path / "train.json"
    train.write_text(json.dumps(dpr_rows(24)))
    # 24 examples / 4 per step = 6 steps, checkpoints after steps 2, 4 and 6 (the 2 newest kept).
    config = TrainMDPRConfig(train=[str(train)], out=f"s3://{bucket}/{prefix}", init=f"hf:{tiny_bert}",
                             max_length=32, batch_size=4, epochs=1, lr=2e-3, warmup_steps=1, checkpoint_every=2,
                             num_workers=2, cpus_per_worker=0.5)

    # 1. The run stops right after its step-2 checkpoint (as a crashed driver would leave it).
    with pytest.raises(Exception, match="fail_after_step"), faults.inject(FaultPlan({faults.TRAIN_FAIL_AFTER_STEP: 2})):
        train_mdpr(config)
    keys = _keys(client, bucket, prefix)
    assert _checkpoints(keys) == ["step-00000002"]  # checkpoint files are in the bucket
    assert "run_config.json" in keys and not any(k.startswith("model/") for k in keys)

    # 2. The same command resumes from that checkpoint: the step count continues to the full 6 steps.
    manifest = train_mdpr(config)
    assert manifest["steps"] == 6 and manifest["final"]["step"] == 6
    assert manifest["final"]["resumed_from_step"] == 2
    keys = _keys(client, bucket, prefix)
    assert _checkpoints(keys) == ["step-00000004", "step-00000006"]
    last = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/ray-train/step-00000006/progress.json")
                      ["Body"].read())
    assert last["step"] == 6 and last["resumed_from_step"] == 2
    for name in ("model/manifest.json", "model/question_encoder/config.json", "model/ctx_encoder/config.json",
                 "model/question_encoder/model.safetensors", "summary.json"):
        assert name in keys, name
    spec = manifest["summary"]["encoder_spec"]
    assert spec == f"hf:s3://{bucket}/{prefix}/model?max_length=32"
    encoder = load_encoder(spec, device="cpu")  # hf: on s3:// is downloaded by the storage layer
    assert encoder.bi_encoder and encoder.encode_queries(["what is the capital of Peru?"]).shape == (1, 32)

    # 3. A finished run is not trained again: it says so and returns the published manifest.
    capsys.readouterr()
    again = train_mdpr(config)
    assert "already trained" in capsys.readouterr().out
    assert again["already_trained"] is True and again["created_at"] == manifest["created_at"]
    assert again["summary"]["encoder_spec"] == spec
    assert _keys(client, bucket, prefix) == keys  # nothing written, nothing trained

    # 4. Changed training options are refused, naming the option (runtime options may change).
    with pytest.raises(ConfigError, match="epochs: 1 → 2.*new --out"):
        train_mdpr(config.model_copy(update={"epochs": 2}))

    # 5. Stopped after training but before publishing: the re-run publishes from the last
    #    checkpoint without training (no new checkpoint appears).
    client.delete_object(Bucket=bucket, Key=f"{prefix}/model/manifest.json")
    republished = train_mdpr(config.model_copy(update={"num_workers": 1}))
    assert "already_trained" not in republished and republished["steps"] == 6
    assert _checkpoints(_keys(client, bucket, prefix)) == ["step-00000004", "step-00000006"]
