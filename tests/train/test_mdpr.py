"""mDPR training: the cross-worker loss, loss falling, the hf: export, Ray Train with a killed worker."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ray_cora import faults
from ray_cora.encoders import PLAIN, TAGGED, format_query, load_encoder
from ray_cora.faults import FaultPlan
from ray_cora.models.mdpr import MDPRTask, ctx_slots, dpr_nll_loss, ranking_metrics
from ray_cora.train.loop import LoopSettings, Stepper, check_batching, warmup_linear
from tests.support import dpr_rows
from tests.support import mdpr_examples as examples


def test_dpr_loss_masks_padding_and_matches_manual_softmax():
    q = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [-1.0, 1.0]])
    mask = torch.tensor([True, True, False, True])
    loss = dpr_nll_loss(q, c, torch.tensor([0, 3]), mask)
    scores = (q @ c.T)[:, [0, 1, 3]]
    expected = -(torch.log_softmax(scores, dim=1)[0, 0] + torch.log_softmax(scores, dim=1)[1, 2]) / 2
    assert torch.allclose(loss, expected)
    slots, slot_mask = ctx_slots(examples()[3], 2)
    assert slot_mask == [True, False, False] and slots[1] == {"title": "", "text": ""}


def test_schedule_batching_and_ranking_metrics():
    assert warmup_linear(150, warmup_steps=300, total_steps=1000) == 0.5
    assert check_batching(batch_size=128, num_workers=8, grad_accumulation=1, examples=1000) == 7
    with pytest.raises(Exception, match="multiple of 4"):
        check_batching(batch_size=6, num_workers=2, grad_accumulation=2, examples=100)
    metrics = ranking_metrics(np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]]), [0, 2], ks=(1, 2))
    assert metrics == {"avg_rank": 2.0, "top1": 0.5, "top2": 0.5}


def _ddp_worker(rank: int, world: int, init_file: str, bert: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    task = MDPRTask(init=f"hf:{bert}", max_length=32)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(task.build().eval())  # eval: no dropout noise
    per = len(examples(8)) // world
    batch = task.collate(examples(8)[rank * per:(rank + 1) * per])
    loss, backprop = task.loss(model, batch, torch.device("cpu"))
    backprop.backward()
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in model.module.named_parameters()
                                                      if p.grad is not None}}, out)
    dist.destroy_process_group()


def test_two_worker_ddp_step_equals_one_worker_step_on_the_global_batch(tiny_bert, tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), tiny_bert, out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    task = MDPRTask(init=f"hf:{tiny_bert}", max_length=32)
    model = task.build().eval()
    loss, backprop = task.loss(model, task.collate(examples(8)), torch.device("cpu"))
    backprop.backward()
    single = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    assert torch.allclose(ddp["loss"], loss.detach(), atol=1e-6)
    assert set(ddp["grads"]) == set(single) and len(single) > 10
    for name, grad in single.items():
        assert torch.allclose(ddp["grads"][name], grad, atol=1e-6, rtol=1e-4), name
    # Without the gather each worker would see only its own 4 questions' passages: a different loss.
    local = MDPRTask(init=f"hf:{tiny_bert}", max_length=32)
    local_model = local.build().eval()
    local_loss, _ = local.loss(local_model, local.collate(examples(8)[:4]), torch.device("cpu"))
    assert abs(float(local_loss.detach()) - float(loss.detach())) > 1e-3


def _train_in_process(task: MDPRTask, steps: int, *, lr: float = 2e-3) -> tuple[object, list[float]]:
    torch.manual_seed(0)
    model = task.build()
    settings = LoopSettings(epochs=1, batch_size=8, steps_per_epoch=steps, lr=lr, warmup_steps=2, max_grad_norm=2.0)
    stepper = Stepper(task, model, settings, torch.device("cpu"))
    data = examples(16)
    losses = [stepper.step([task.collate(data[(i % 2) * 8:(i % 2) * 8 + 8])]) for i in range(steps)]
    return model.eval(), losses


def test_loss_falls(tiny_bert):
    # Mean pooling: a random tiny BERT's [CLS] vectors are nearly identical across inputs and learn slowly.
    _, losses = _train_in_process(MDPRTask(init=f"hf:{tiny_bert}?pooling=mean", max_length=32), 30, lr=5e-3)
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


@pytest.mark.parametrize("init", ["hf", "dpr"])
def test_export_loads_as_hf_encoder_and_encodes_as_training_did(tiny_bert, tiny_cpt, tmp_path, init):
    spec = f"hf:{tiny_bert}" if init == "hf" else f"dpr:{tiny_cpt}"
    task = MDPRTask(init=spec, max_length=32)
    assert task.zeros == (init == "dpr")  # CORA's checkpoints were trained with all-zero segment ids
    model, _ = _train_in_process(task, 3)
    task.export(model, str(tmp_path / "export"))
    assert sorted(os.listdir(tmp_path / "export")) == ["ctx_encoder", "question_encoder", "ray_cora_encoder.json"]
    encoder = load_encoder(f"hf:{tmp_path / 'export'}", device="cpu")
    data = examples(6)
    batch = task.collate(data)
    with torch.no_grad():
        q, c = model(batch["questions"], batch["ctxs"])
    keep = batch["ctx_mask"].numpy()
    slots = [s for ex in data for s, m in zip(*ctx_slots(ex, 1)) if m]
    # dpr: starts tagged (CORA's --add_lang), and the export says so: hf: retrieves as training wrote questions
    assert encoder.query_format == (TAGGED if init == "dpr" else PLAIN)
    queries = [format_query(encoder.query_format, ex["question"], "en") for ex in data]
    np.testing.assert_allclose(encoder.encode_queries(queries), q.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_passages([s["title"] for s in slots], [s["text"] for s in slots]),
                               c.numpy()[keep], atol=1e-5)


@pytest.mark.slow
def test_ray_train_two_workers_killed_worker_resumes_and_exports(ray_local, tiny_bert, tmp_path):
    from ray_cora.configs.train import TrainMDPRConfig
    from ray_cora.train.jobs import train_mdpr

    train = tmp_path / "train.json"
    train.write_text(json.dumps(dpr_rows(24)))
    marker = tmp_path / "killed"
    config = TrainMDPRConfig(train=[str(train)], dev=[str(train)], out=str(tmp_path / "out"),
                             init=f"hf:{tiny_bert}", max_length=32, batch_size=4, epochs=1, lr=2e-3,
                             warmup_steps=1, checkpoint_every=2, num_workers=2, max_failures=1)
    # Killed right after the step-4 checkpoint was reported: Ray Train registers a checkpoint only once
    # it has polled every worker's report, so without the loop's commit wait the killed worker's queued
    # report is lost and the restart resumes from step 2 (or from 0 after the first checkpoint).
    with faults.inject(FaultPlan({faults.TRAIN_KILL_WORKER_AT_STEP: 4}, once_marker=str(marker))):
        manifest = train_mdpr(config)
    assert marker.exists()  # the last worker really was SIGKILLed after step 4
    assert manifest["steps"] == 6 and manifest["final"]["step"] == 6
    assert manifest["final"]["resumed_from_step"] == 4  # exactly the checkpoint it was killed after
    summary = manifest["summary"]
    assert summary["encoder_spec"] == f"hf:{tmp_path / 'out' / 'model'}?max_length=32"
    assert set(summary["dev"]) == {"avg_rank", "top1", "top5", "top20"}
    encoder = load_encoder(summary["encoder_spec"], device="cpu")
    assert encoder.bi_encoder and encoder.encode_queries(["what is the capital of Peru?"]).shape == (1, 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast path)")
def test_bf16_autocast_step_on_gpu(tiny_bert):
    task = MDPRTask(init=f"hf:{tiny_bert}?pooling=mean", max_length=32)
    model = task.build().cuda()
    settings = LoopSettings(epochs=1, batch_size=8, steps_per_epoch=4, lr=5e-3, warmup_steps=1, max_grad_norm=2.0,
                            use_gpu=True, bf16=True)
    stepper = Stepper(task, model, settings, torch.device("cuda"))
    losses = [stepper.step([task.collate(examples(8))]) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
