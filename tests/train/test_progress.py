"""What a training run says while it runs: progress lines (step, loss, samples/s, lr, ETA), epoch,
checkpoint, best-dev and resume lines, the final summary; TensorBoard scalars; MLflow through Ray's
setup_mlflow; float32 weights for training whatever dtype a checkpoint was saved in."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import time
from pathlib import Path

import pytest
import torch

from ray_cora import faults
from ray_cora.errors import ConfigError
from ray_cora.faults import FaultPlan
from ray_cora.train.progress import LogSettings, ProgressMeter, resume_line
from tests.support import dpr_rows


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_every_n_steps_with_a_time_floor_and_pauses_left_out_of_samples_per_s():
    clock = Clock()
    meter = ProgressMeter(job="train-mdpr", total_steps=200, steps_per_epoch=100, every_steps=50, every_s=30,
                          start_step=0, clock=clock)
    due = []
    for step in range(1, 121):
        clock.now += 0.1  # 0.1 s per step, 16 examples per step over all workers
        meter.add(loss=2.0 if step <= 50 else 1.0, samples=16)
        if step == 100:
            clock.now += 20.0  # a checkpoint upload: not training time
            meter.pause_end()
        if meter.due(step):
            due.append(step)
            metrics = meter.window(step=step, epoch=(step - 1) // 100 + 1, lr=2e-5)
            if step == 50:
                assert metrics["loss"] == pytest.approx(2.0) and metrics["samples_per_s"] == pytest.approx(160.0)
                assert metrics["eta_s"] == pytest.approx(150 * 0.1)  # 150 steps left at 0.1 s each
                line = meter.line(metrics)
                assert re.fullmatch(r"train-mdpr: step 50/200 \(25%\) epoch 1/2 loss 2\.0000 samples/s 160\.0 "
                                    r"lr 2\.00e-05 elapsed 0:00:05 eta 0:00:15", line), line
            if step == 100:
                # samples/s leaves the 20 s pause out; elapsed and the ETA (per-step wall time) keep it
                assert metrics["samples_per_s"] == pytest.approx(160.0)
                assert metrics["elapsed_s"] == pytest.approx(30.0) and metrics["eta_s"] == pytest.approx(30.0)
    assert due == [50, 100]
    # A slow run: nothing is due by step count for a long time, the time floor still prints.
    slow = ProgressMeter(job="j", total_steps=1000, steps_per_epoch=1000, every_steps=50, every_s=30, clock=clock)
    lines = []
    for step in range(1, 8):
        clock.now += 12.0
        slow.add(loss=1.0, samples=1)
        if slow.due(step):
            lines.append(step)
            slow.window(step=step, epoch=1, lr=1.0)
    assert lines == [3, 6]  # 36 s after the start, 36 s after that line: never more than 30 s without one
    assert not slow.step_due(7)  # the workers' common report points are the step-count ones only


def test_resume_line_names_the_checkpoint_and_what_is_skipped():
    assert resume_line("train-mgen", checkpoint="/o/ray-train/step-00000002", step=2, total_steps=8,
                       steps_per_epoch=4) == ("train-mgen: resumed from checkpoint /o/ray-train/step-00000002 at "
                                              "step 2/8 (epoch 1/2): skipping the first 2 of 4 batches of epoch 1 "
                                              "(already trained)")
    assert "skipping epochs 1-2 (already trained)" in resume_line("j", checkpoint="c", step=8, total_steps=12,
                                                                  steps_per_epoch=4)
    assert "nothing to train" in resume_line("j", checkpoint="c", step=8, total_steps=8, steps_per_epoch=4)


def _tf_events(folder: Path) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of every scalar in the TensorBoard event files under ``folder`` (TFRecord:
    length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    values = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                values[(value.tag, event.step)] = value.simple_value
    return values


def test_tensorboard_callback_writes_rank_0s_reported_metrics(tmp_path):
    from ray_cora.train.tracking import TensorBoardCallback

    callback = pickle.loads(pickle.dumps(TensorBoardCallback(str(tmp_path / "tb"))))  # as sent to the controller
    callback.after_report(None, [{"step": 4, "epoch": 1, "loss": 0.5, "lr": 1e-3, "samples_per_s": 80.0,
                                  "dev_nll": 0.7, "kept_score": 1}, {"step": 4, "loss": 9.0}], None)
    callback.after_report(None, [{"step": 6, "epoch": 2, "loss": 0.25, "lr": 5e-4}], None)
    events = _tf_events(tmp_path / "tb")
    assert events[("train/loss", 4)] == pytest.approx(0.5) and events[("train/loss", 6)] == pytest.approx(0.25)
    assert events[("dev/nll", 4)] == pytest.approx(0.7) and events[("train/lr", 6)] == pytest.approx(5e-4)
    assert not any(tag in ("train/step", "train/epoch", "train/kept_score") for tag, _ in events)
    assert pickle.loads(pickle.dumps(callback))._writer is None  # the writer stays in the controller


def test_tracking_options_need_their_packages_and_a_local_tensorboard_folder(monkeypatch):
    from ray_cora.configs.train import TrainMDPRConfig
    from ray_cora.train import tracking

    config = TrainMDPRConfig(train=["t.json"], out="o", init="hf:x", mlflow_tracking_uri="http://127.0.0.1:5000",
                             tensorboard_dir="tb")
    real_find_spec = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mlflow", "tensorboardX") else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"^option 'mlflow_tracking_uri': .*pip install mlflow-skinny") as info:
        tracking.log_settings(config, "train-mdpr")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^option 'tensorboard_dir': .*pip install tensorboardX"):
        tracking.log_settings(config.model_copy(update={"mlflow_tracking_uri": None}), "train-mdpr")
    with pytest.raises(ConfigError, match="a URI; give a local folder"):
        tracking.check_tracking(mlflow_tracking_uri=None, tensorboard_dir="s3://b/tb")
    with pytest.raises(ConfigError, match="mlflow_experiment' needs mlflow_tracking_uri"):
        TrainMDPRConfig.load(overrides={"train": ["t.json"], "out": "o", "init": "hf:x", "mlflow_experiment": "e"})


def test_mlflow_run_goes_through_rays_setup_mlflow(monkeypatch):
    from ray_cora.train import tracking

    calls = []

    class FakeMlflow:  # what setup_mlflow returns: the mlflow module (rank 0) or a no-op
        def log_metrics(self, values, step):
            calls.append(("log_metrics", values, step))

        def end_run(self):
            calls.append(("end_run",))

    def fake_setup_mlflow(**kwargs):
        calls.append(("setup", kwargs))
        return FakeMlflow()

    monkeypatch.setattr(tracking, "setup_mlflow", fake_setup_mlflow)
    assert tracking.MLflowRun(LogSettings(job="train-mgen"), {})._mlflow is None  # off unless a URI is given
    run = tracking.MLflowRun(LogSettings(job="train-mgen", mlflow_tracking_uri="file:///tmp/mlruns"), {"lr": 3e-5})
    run.log({"step": 4, "epoch": 1, "loss": 0.5, "lr": 3e-5, "eta_s": float("nan")}, step=4)
    run.close()
    setup = calls[0][1]
    assert setup["tracking_uri"] == "file:///tmp/mlruns" and setup["experiment_name"] == "train-mgen"
    assert setup["config"] == {"lr": 3e-5} and setup["rank_zero_only"] and setup["create_experiment_if_not_exists"]
    assert calls[1:] == [("log_metrics", {"loss": 0.5, "lr": 3e-5}, 4), ("end_run",)]


def _bf16_copy(folder: str, dest: Path, auto_cls) -> str:
    model = auto_cls.from_pretrained(folder, dtype=torch.float32).to(torch.bfloat16)
    model.save_pretrained(dest)
    for name in os.listdir(folder):
        if "token" in name or name.endswith((".model", ".txt")):
            (dest / name).write_bytes((Path(folder) / name).read_bytes())
    assert json.loads((dest / "config.json").read_text()).get("dtype") == "bfloat16"
    return str(dest)


def test_models_loaded_for_training_are_float32_from_a_bf16_checkpoint(tiny_bert, tiny_t5, tmp_path):
    from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from ray_cora.models.mdpr import MDPRTask
    from ray_cora.models.mgen import MGENTask
    from ray_cora.pivot.rerank import build_tiny_cross_encoder
    from ray_cora.train.reranker import load_reranker_for_training

    bert16 = _bf16_copy(tiny_bert, tmp_path / "bert16", AutoModel)
    t516 = _bf16_copy(tiny_t5, tmp_path / "t516", AutoModelForSeq2SeqLM)
    assert next(AutoModelForSeq2SeqLM.from_pretrained(t516).parameters()).dtype == torch.bfloat16  # "auto"
    mdpr = MDPRTask(init=f"hf:{bert16}", max_length=32).build()
    mgen = MGENTask(init=t516).build()
    cross = build_tiny_cross_encoder(tmp_path / "cross", ["a b c", "d e f"], vocab_size=60)
    cross16 = _bf16_copy(str(cross), tmp_path / "cross16", AutoModelForSequenceClassification)
    reranker = load_reranker_for_training(f"hf:{cross16}").model
    for model in (mdpr, mgen, reranker):
        assert {p.dtype for p in model.parameters()} == {torch.float32}, type(model).__name__


@pytest.fixture(scope="module")
def ray_streaming():
    """A local Ray on 127.0.0.1 (2 CPUs) that streams its workers' output to this process, as
    ``ray-cora`` runs one (``log_to_driver``; the driver's output is what ``ray job logs`` shows)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def _output_until(capfd, marker: str, timeout_s: float = 30.0) -> str:
    """This process's output so far, waiting (a little) for Ray's log streaming to bring ``marker``."""
    text = ""
    deadline = time.monotonic() + timeout_s
    while True:
        captured = capfd.readouterr()
        text += captured.out + captured.err
        if marker in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


@pytest.mark.slow
def test_a_resumed_run_prints_progress_epoch_checkpoint_resume_and_summary_lines_and_tensorboard(
        ray_streaming, tiny_bert, tmp_path, capfd):
    from ray_cora.configs.train import TrainMDPRConfig
    from ray_cora.train.jobs import train_mdpr

    train = tmp_path / "train.json"
    train.write_text(json.dumps(dpr_rows(16)))
    out, tb = tmp_path / "out", tmp_path / "tb"
    ckpt = f"{out}/ray-train"
    # 16 examples / 4 per step = 4 steps an epoch, 2 epochs; checkpoints every 2 steps.
    config = TrainMDPRConfig(train=[str(train)], dev=[str(train)], out=str(out), init=f"hf:{tiny_bert}",
                             max_length=32, batch_size=4, epochs=2, lr=2e-3, warmup_steps=1, checkpoint_every=2,
                             num_workers=2, cpus_per_worker=0.5, log_every_steps=2,
                             log_every_s=0)  # no time-floor lines: the lines below are exactly the step-count ones
    # 1. Stopped right after its step-2 checkpoint.
    with pytest.raises(Exception, match="fail_after_step"), faults.inject(FaultPlan({faults.TRAIN_FAIL_AFTER_STEP: 2})):
        train_mdpr(config)
    first = _output_until(capfd, f"checkpoint {ckpt}/step-00000002 committed")
    assert (f"train-mdpr: training 8 steps (2 epoch(s) of 4, 4 examples per step over 2 worker(s)); a line every "
            f"2 steps or 0 s; checkpoints in {ckpt}") in first
    assert re.search(r"train-mdpr: step 2/8 \(25%\) epoch 1/2 loss \d+\.\d{4} samples/s", first)

    # 2. The same command again resumes, and says so; TensorBoard on this time (a runtime option).
    train_mdpr(config.model_copy(update={"tensorboard_dir": str(tb)}))
    text = _output_until(capfd, "train-mdpr: training done at step 8/8")
    assert (f"train-mdpr: resumed from checkpoint {ckpt}/step-00000002 at step 2/8 (epoch 1/2): skipping the "
            "first 2 of 4 batches of epoch 1 (already trained)") in text
    steps = re.findall(r"train-mdpr: step (\d)/8 \(\d+%\) epoch (\d)/2 loss (\d+\.\d{4}) samples/s (\d+\.\d) "
                       r"lr (\S+) elapsed \d:\d\d:\d\d eta \d:\d\d:\d\d", text)
    assert [(s, e) for s, e, *_ in steps] == [("4", "1"), ("6", "2"), ("8", "2")], text[-3000:]
    assert all(float(rate) > 0 for *_, rate, _ in steps)
    assert float(steps[0][4]) > float(steps[1][4]) > float(steps[2][4]) == 0.0  # linear decay to 0 at the end
    assert "train-mdpr: epoch 1/2 done at step 4/8: mean loss" in text
    assert "train-mdpr: epoch 2/2 done at step 8/8: mean loss" in text
    assert re.search(r"train-mdpr: epoch 1/2 dev nll \d+\.\d{4}: new best, this checkpoint is kept", text)
    assert re.search(r"train-mdpr: epoch 2/2 dev nll \d+\.\d{4}: (new best|best stays epoch 1)", text)
    for step, epoch in ((4, 1), (6, 2), (8, 2)):
        assert f"train-mdpr: checkpoint {ckpt}/step-{step:08d} committed (step {step}/8, epoch {epoch})" in text
    assert re.search(r"train-mdpr: training done at step 8/8, \d:\d\d:\d\d in this attempt \(resumed at step 2\)",
                     text)
    summary = re.search(rf"train-mdpr: finished: 8/8 steps in \d:\d\d:\d\d; best epoch (\d) \(dev nll "
                        rf"\d+\.\d{{4}}, step (\d)\); checkpoint {re.escape(ckpt)}/step-0000000(\d); model "
                        rf"{re.escape(str(out / 'model'))}", text)
    assert summary and summary[2] == summary[3] == str(4 * int(summary[1])), text[-2000:]
    # Rank 0's lines come through Ray's log streaming, tagged with the worker, each once.
    assert re.search(r"\(RayTrainWorker pid=\d+[^)]*\)(\x1b\[0m)? train-mdpr: step 4/8", text)
    assert len(re.findall(r"train-mdpr: step 4/8", text)) == 1

    # 3. TensorBoard: the reported metrics of the resumed attempt, at their steps.
    events = _tf_events(tb)
    assert {s for tag, s in events if tag == "train/loss"} == {4, 6, 8}
    assert {s for tag, s in events if tag == "dev/nll"} == {4, 8}
    assert all(events[("train/samples_per_s", s)] > 0 for s in (4, 6, 8))
