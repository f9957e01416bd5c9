"""Keeping the best dev epoch through Ray Train (CORA: mDPR's validate_and_save, mGEN's val-EM
checkpoint): the published model is the best epoch's, Ray keeps only it and the latest checkpoint,
the choice survives a resume, and a tagged mDPR run exports its query format."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import pytest
import ray.cloudpickle
import torch

from ray_cora import faults
from ray_cora.encoders import TAGGED, load_encoder
from ray_cora.faults import FaultPlan
from ray_cora.models.mdpr import MDPRTask
from tests.support import dpr_rows, qa_pairs

# The scripted task below travels to the Ray Train workers by value (they need not import tests/).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class ScriptedDevMDPR(MDPRTask):
    """The tiny mDPR task whose dev NLL is read from ``script`` (one value per epoch, in order)."""

    script: tuple[float, ...] = ()
    _calls: list = field(default_factory=list, repr=False, compare=False)

    def dev_metrics(self, model, examples, device, *, metric):
        assert not model.training and not torch.is_grad_enabled()  # eval mode, no gradients
        self._calls.append(metric)
        return {"nll": self.script[len(self._calls) - 1], "nll_correct": 0.0}


def _checkpoint_steps(out) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "ray-train").glob("step-*") if (p / "state.pt").exists())


@pytest.mark.slow
def test_published_model_is_the_best_dev_epoch_not_the_last(ray_local, tiny_bert, tmp_path, monkeypatch):
    from transformers import AutoModel

    from ray_cora.configs.train import TrainMDPRConfig
    from ray_cora.train import jobs
    from ray_cora.train.loop import load_state

    train = tmp_path / "train.json"
    train.write_text(json.dumps(dpr_rows(16)))
    # 16 examples / 4 = 4 steps an epoch, 3 epochs; checkpoints every 2 steps: 2, 4 (epoch 1), 6, 8 (epoch 2), 10, 12.
    config = TrainMDPRConfig(train=[str(train)], dev=[str(train)], out=str(tmp_path / "out"), init=f"hf:{tiny_bert}",
                             max_length=32, batch_size=4, epochs=3, lr=2e-3, warmup_steps=1, checkpoint_every=2,
                             num_workers=2, cpus_per_worker=0.5)
    scripted = ScriptedDevMDPR(**{k: v for k, v in vars(jobs.mdpr_task(config)).items() if not k.startswith("_")},
                               script=(0.9, 0.5, 0.7))  # rises (lower NLL is better), then drops in the last epoch
    monkeypatch.setattr(jobs, "mdpr_task", lambda _config: scripted)
    result = jobs.train_mdpr(config)

    summary = result["summary"]
    assert summary["kept"] == {"epoch": 2, "step": 8, "metric": "nll", "value": 0.5}
    assert [(h["epoch"], h["step"], h["value"], h["best"]) for h in summary["dev_history"]] == [
        (1, 4, 0.9, True), (2, 8, 0.5, True), (3, 12, 0.7, False)]
    assert result["kept"] == summary["kept"] and result["steps"] == 12
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["kept"]["epoch"] == 2 and len(saved["dev_history"]) == 3
    # Ray Train kept the best checkpoint and the latest (needed to resume), deleted the others.
    out = tmp_path / "out"
    assert _checkpoint_steps(out) == [8, 12]
    best = load_state(str(out / "ray-train" / "step-00000008"))["model"]
    last = load_state(str(out / "ray-train" / "step-00000012"))["model"]
    published = AutoModel.from_pretrained(str(out / "model" / "question_encoder")).state_dict()
    compared = [k for k in published if f"question_model.{k}" in best]
    assert len(compared) > 10
    for key in compared:
        assert torch.equal(published[key], best[f"question_model.{key}"]), key
    assert any(not torch.equal(published[k], last[f"question_model.{k}"]) for k in compared)


@pytest.mark.slow
def test_real_mdpr_dev_scores_survive_a_resume_and_the_tagged_export(ray_local, tiny_bert, tmp_path):
    from ray_cora.configs.train import TrainMDPRConfig
    from ray_cora.train.jobs import train_mdpr

    train = tmp_path / "train.json"
    train.write_text(json.dumps(dpr_rows(16)))
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps([{**r, "lang": "en"} for r in dpr_rows(12)]))
    # Epoch 1 scored by NLL, epochs 2-3 by average rank (CORA's switch, the best reset at epoch 2).
    config = TrainMDPRConfig(train=[str(train)], dev=[str(dev)], out=str(tmp_path / "out"), init=f"hf:{tiny_bert}",
                             max_length=32, batch_size=4, epochs=3, lr=2e-3, warmup_steps=1, num_workers=2,
                             cpus_per_worker=0.5, val_av_rank_start_epoch=1, val_av_rank_hard_neg=1,
                             val_av_rank_other_neg=0, dev_batch_size=4, query_format="tagged")
    with pytest.raises(Exception, match="fail_after_step"), faults.inject(FaultPlan({faults.TRAIN_FAIL_AFTER_STEP: 8})):
        train_mdpr(config)  # stops right after the epoch-2 checkpoint
    result = train_mdpr(config)
    assert result["final"]["resumed_from_step"] == 8
    history = result["summary"]["dev_history"]
    assert [(h["epoch"], h["metric"]) for h in history] == [(1, "nll"), (2, "avg_rank"), (3, "avg_rank")]
    ranked = [h for h in history if h["metric"] == "avg_rank"]
    best = min(ranked, key=lambda h: h["value"])  # first of equals, as CORA's strict "<"
    assert result["summary"]["kept"] == {k: best[k] for k in ("epoch", "step", "metric", "value")}
    assert set(ranked[0]["metrics"]) == {"avg_rank", "top1", "top5", "top20"}
    # The export records the format it was trained with; hf: reads it back.
    model = tmp_path / "out" / "model"
    assert json.loads((model / "ray_cora_encoder.json").read_text()) == {"query_format": "tagged"}
    assert load_encoder(f"hf:{model}", device="cpu").query_format == TAGGED


@pytest.mark.slow
def test_real_mgen_run_keeps_the_best_em_epoch(ray_local, tiny_t5, tmp_path):
    from ray_cora.configs.train import TrainMGENConfig
    from ray_cora.train.jobs import train_mgen

    retrieval = tmp_path / "retrieval.jsonl"
    retrieval.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in qa_pairs()))
    config = TrainMGENConfig(train=[str(retrieval)], dev=[str(retrieval)], out=str(tmp_path / "out"), init=tiny_t5,
                             top_k=1, max_source_length=128, max_target_length=16, batch_size=4, grad_accumulation=1,
                             lr=3e-3, warmup_steps=2, epochs=3, num_workers=1, cpus_per_worker=1, dropout=0.0)
    manifest = train_mgen(config)
    history = manifest["dev_history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and all(h["metric"] == "em" for h in history)
    assert all(set(h["metrics"]) == {"em", "f1"} for h in history)
    best = max(history, key=lambda h: h["value"])  # max() returns the first of equals
    assert manifest["kept"] == {k: best[k] for k in ("epoch", "step", "metric", "value")}
    manifest_file = json.loads((tmp_path / "out" / "model" / "manifest.json").read_text())
    assert manifest_file["kept"] == manifest["kept"] and len(manifest_file["dev_history"]) == 3
