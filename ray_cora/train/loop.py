"""The training loop shared by mDPR and mGEN, and the one function that starts Ray Train.

A *task* (``MDPRTask``, ``MGENTask``) knows its model: ``build()`` makes it, ``collate(examples)``
turns a list of example dicts into CPU tensors, ``loss(model, batch)`` is the forward pass, and
``export(model, folder)`` saves the result. Everything else is here:

- AdamW (no weight decay on biases and LayerNorm weights) with linear warm-up then linear decay;
- gradient accumulation (``no_sync`` on the inner micro-batches under DDP), gradient clipping,
  bf16 autocast on GPU;
- :func:`train_worker`, the Ray Train worker function: resumes from ``ray.train.get_checkpoint()``,
  reads its shard with ``ray.train.get_dataset_shard``, takes exactly ``steps_per_epoch`` steps per
  epoch on every worker (so every worker calls ``ray.train.report`` the same number of times) and
  reports a checkpoint every ``checkpoint_every`` steps and at the end of each epoch, then waits
  until the Ray Train controller has *committed* it (:func:`wait_until_committed`);
- :func:`fit`, the driver side: ``TorchTrainer`` with ``ScalingConfig`` / ``RunConfig(storage_path)``
  / ``FailureConfig`` on any storage URI (``s3://`` included).

**Why wait for the commit.** In Ray Train 2.x (the v2 controller, Ray's default), ``ray.train.report``
returns once the report is in the worker's one-slot result queue; the controller polls each worker
every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s) and registers a checkpoint only when it has the
report of *every* worker. A worker that dies in that window takes its queued report with it, the
checkpoint is never registered, and after the worker-group restart ``ray.train.get_checkpoint()``
returns the previous one (or ``None``: training restarts from step 0, though rank 0 had already
uploaded the newer files). So after each checkpoint report every worker calls
``ray.train.get_all_reported_checkpoints(consistency_mode=COMMITTED)``, which blocks until the
controller has registered all of that worker's reports (at most one poll interval per checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Protocol, Sequence

import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_cora import faults, storage
from ray_cora.errors import ConfigError
from ray_cora.runtime import worker_runtime_env

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs, as plain values (it travels to every worker)."""

    epochs: int
    batch_size: int  # examples per optimizer step, over all workers and accumulation steps
    steps_per_epoch: int
    lr: float
    warmup_steps: int
    max_grad_norm: float
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_accumulation: int = 1
    checkpoint_every: int = 0  # 0: at the end of each epoch only
    seed: int = 0
    use_gpu: bool = False
    bf16: bool = True  # autocast on GPU only
    shuffle_buffer: int = 1000

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def micro_batch(self, world_size: int) -> int:
        return self.batch_size // (world_size * self.grad_accumulation)


class Task(Protocol):
    def build(self) -> Any: ...
    def collate(self, examples: list[dict[str, Any]]) -> Any: ...
    def loss(self, model: Any, batch: Any, device: Any) -> Any: ...
    def export(self, model: Any, folder: str) -> None: ...


def check_batching(*, batch_size: int, num_workers: int, grad_accumulation: int, examples: int) -> int:
    """Steps per epoch; the batch must split evenly over workers and accumulation steps.

    >>> check_batching(batch_size=8, num_workers=2, grad_accumulation=2, examples=20)
    2
    """
    per = num_workers * grad_accumulation
    if batch_size % per:
        raise ConfigError(f"option 'batch_size': {batch_size} examples per step do not split evenly over "
                          f"{num_workers} worker(s) × {grad_accumulation} accumulation step(s); use a "
                          f"multiple of {per}")
    steps = examples // batch_size
    if steps < 1:
        raise ConfigError(f"only {examples} valid training examples, fewer than one batch of {batch_size}; "
                          "lower --batch-size or add data")
    return steps


# ---------------------------------------------------------------- optimizer and schedule (pure)

def build_optimizer(model: Any, *, lr: float, weight_decay: float, eps: float) -> Any:
    """AdamW, without weight decay on biases and LayerNorm weights (as DPR and HF trainers do)."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(n in name for n in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, eps=eps)


def warmup_linear(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from 0 to 1 over ``warmup_steps``, then linear decay to 0.

    >>> [round(warmup_linear(s, warmup_steps=2, total_steps=6), 2) for s in range(7)]
    [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_scheduler(optimizer: Any, *, warmup_steps: int, total_steps: int) -> Any:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_linear, warmup_steps=warmup_steps, total_steps=total_steps))


# ---------------------------------------------------------------- one optimizer step

class Stepper:
    """Model + optimizer + schedule; :meth:`step` runs one optimizer step over its micro-batches.

    Used by the Ray Train worker and, without Ray, by tests and the single-process benchmark.
    """

    def __init__(self, task: Task, model: Any, settings: LoopSettings, device: Any, *, total_steps: int | None = None) -> None:
        self.task, self.model, self.settings, self.device = task, model, settings, device
        self.optimizer = build_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay,
                                         eps=settings.adam_eps)
        self.scheduler = build_scheduler(self.optimizer, warmup_steps=settings.warmup_steps,
                                         total_steps=total_steps or settings.total_steps)
        self.step_count = 0

    def autocast(self) -> Any:
        import torch

        if self.device.type == "cuda" and self.settings.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, micro_batches: Sequence[Any]) -> float:
        """Forward/backward every micro-batch (averaging their losses), clip, step; returns the loss."""
        import torch

        self.model.train()
        total = 0.0
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or not hasattr(self.model, "no_sync")
            with (contextlib.nullcontext() if sync else self.model.no_sync()), self.autocast():
                loss, backprop = self.task.loss(self.model, batch, self.device)
            (backprop / n).backward()
            total += float(loss.detach()) / n
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return total

    def state(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step_count}

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])


def unwrap(model: Any) -> Any:
    """The model inside a DDP wrapper."""
    return getattr(model, "module", model)


def save_state(folder: str, stepper: Stepper, progress: dict[str, Any]) -> None:
    import torch

    torch.save(stepper.state(), os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, PROGRESS_FILE), "w", encoding="utf-8") as handle:
        json.dump(progress, handle)


def load_state(folder: str) -> dict[str, Any]:
    import torch

    return torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- Ray Train worker

def wait_until_committed(timeout_s: float = 600.0) -> None:
    """Block until the Ray Train controller has registered every report this worker made.

    Without this, a worker killed within one controller poll interval of a checkpoint report loses
    that report, and the restarted worker group resumes from an older checkpoint (see the module
    docstring). A no-op where the API is missing (Ray Train v1, ``RAY_TRAIN_V2_ENABLED=0``).
    """
    mode = getattr(ray.train, "CheckpointConsistencyMode", None)
    get_all = getattr(ray.train, "get_all_reported_checkpoints", None)
    if mode is None or get_all is None:
        return
    get_all(consistency_mode=mode.COMMITTED, timeout_s=timeout_s)


def _micro_batches(shard: Any, *, micro: int, accumulation: int, seed: int, buffer: int) -> Iterator[list[list[dict]]]:
    """Groups of ``accumulation`` micro-batches (lists of example dicts) from the worker's shard."""
    group: list[list[dict]] = []
    for batch in shard.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True,
                                    local_shuffle_buffer_size=buffer or None,
                                    local_shuffle_seed=seed if buffer else None):
        group.append([json.loads(s) for s in batch["example"].tolist()])
        if len(group) == accumulation:
            yield group
            group = []


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (``config``: ``{"task", "settings", "faults"}``; ``faults``,
    the driver's :class:`~ray_cora.faults.FaultPlan`, is for tests and may be left out)."""
    import torch

    task: Task = config["task"]
    settings: LoopSettings = config["settings"]
    plan: faults.FaultPlan = config.get("faults", faults.EMPTY)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(settings.seed)

    model = task.build()
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(folder)
        model.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    stepper = Stepper(task, model, settings, device)
    if state is not None:
        stepper.load_state(state)
    resumed_from = stepper.step_count
    shard = ray.train.get_dataset_shard("train")
    micro = settings.micro_batch(world)
    losses: list[float] = []
    started = time.perf_counter()
    examples_seen = 0

    def report(epoch: int, *, with_checkpoint: bool) -> None:
        nonlocal losses, started, examples_seen
        elapsed = max(time.perf_counter() - started, 1e-9)
        metrics = {"step": stepper.step_count, "epoch": epoch, "loss": sum(losses) / max(len(losses), 1),
                   "lr": stepper.scheduler.get_last_lr()[0], "resumed_from_step": resumed_from,
                   "samples_per_s": examples_seen / elapsed, "world_size": world}
        if with_checkpoint:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    save_state(tmp, stepper, metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                                 checkpoint_dir_name=f"step-{stepper.step_count:08d}")
            wait_until_committed()
        else:
            ray.train.report(metrics)
        # samples_per_s covers training steps only: not checkpoint saving, uploading or the commit wait
        losses, examples_seen, started = [], 0, time.perf_counter()

    start_epoch = stepper.step_count // settings.steps_per_epoch
    for epoch in range(start_epoch, settings.epochs):
        done_in_epoch = stepper.step_count - epoch * settings.steps_per_epoch
        groups = _micro_batches(shard, micro=micro, accumulation=settings.grad_accumulation,
                                seed=settings.seed + epoch, buffer=settings.shuffle_buffer)
        for index in range(settings.steps_per_epoch):
            group = next(groups, None)
            if group is None:
                raise RuntimeError(f"worker {rank}: its data shard ran out after {index} of "
                                   f"{settings.steps_per_epoch} steps in epoch {epoch + 1}")
            if index < done_in_epoch:  # resumed mid-epoch: these steps are in the checkpoint
                continue
            losses.append(stepper.step([task.collate(b) for b in group]))
            examples_seen += micro * settings.grad_accumulation * world
            last = index == settings.steps_per_epoch - 1
            if last or (settings.checkpoint_every and stepper.step_count % settings.checkpoint_every == 0):
                report(epoch + 1, with_checkpoint=True)
            if plan:
                inject_step_faults(plan, stepper.step_count, rank=rank, world=world)
        for _ in groups:  # drain the shard so the next epoch starts cleanly
            pass


def inject_step_faults(plan: faults.FaultPlan, step: int, *, rank: int, world: int) -> None:
    """Right after ``step`` (after its report: at a checkpoint step, right after that checkpoint).
    ``train.kill_worker_at_step``: SIGKILL the last worker once (remembered in the plan's marker).
    ``train.fail_after_step``: every worker raises (:func:`fit` then runs with max_failures=0, so
    this stops the whole run, as a crashed driver or a Ctrl-C would)."""
    if rank == world - 1:
        plan.die_once_here(faults.TRAIN_KILL_WORKER_AT_STEP, step, sigkill=True)
    plan.raise_at(faults.TRAIN_FAIL_AFTER_STEP, step, f"stopping after step {step}")


# ---------------------------------------------------------------- driver

@dataclass(frozen=True)
class RunSettings:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    max_failures: int = 2
    keep_checkpoints: int = 2


def fit(task: Task, settings: LoopSettings, dataset: Any, *, out: str, run: RunSettings, name: str) -> Any:
    """Train ``task`` with ``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU); Ray Train state and
    checkpoints go to ``<out>/<name>/`` on any storage URI. Rerunning with the same ``out`` resumes
    from the latest checkpoint there. Returns the Ray Train ``Result``. The fault plan in force
    (:func:`ray_cora.faults.current`, tests only) travels to the workers in ``train_loop_config``."""

    plan = faults.current()
    # A test that stops every worker on purpose wants the run to stop, not to be retried.
    max_failures = 0 if plan.get(faults.TRAIN_FAIL_AFTER_STEP) is not None else run.max_failures
    root = storage.resolve(out)
    resources = {"CPU": run.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"task": task, "settings": settings, "faults": plan},
        scaling_config=ScalingConfig(num_workers=run.num_workers, use_gpu=run.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=root.path, storage_filesystem=root.fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=run.keep_checkpoints),
                             worker_runtime_env=worker_runtime_env()),
        datasets={"train": dataset},
    )
    return trainer.fit()


def load_final_model(task: Task, result: Any) -> tuple[Any, dict[str, Any]]:
    """The model of the run's last checkpoint (built on the driver) and that checkpoint's progress."""
    if result.checkpoint is None:
        raise ConfigError("training reported no checkpoint; see the Ray Train logs above")
    model = task.build()
    with result.checkpoint.as_directory() as folder:
        state = load_state(folder)
        with open(os.path.join(folder, PROGRESS_FILE), encoding="utf-8") as handle:
            progress = json.load(handle)
    model.load_state_dict(state["model"])
    return model.eval(), progress


def publish_model(task: Task, model: Any, out: str, *, kind: str, config: dict[str, Any],
                  extra: dict[str, Any]) -> dict[str, Any]:
    """Export the model into ``out`` as an artifact (files first, ``manifest.json`` last)."""
    writer = storage.ArtifactWriter(out, kind=kind, config=config)
    with tempfile.TemporaryDirectory(prefix="ray-cora-export-") as tmp:
        task.export(model, tmp)
        for dirpath, _, names in os.walk(tmp):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, tmp).replace(os.sep, "/")
                with open(path, "rb") as src, writer.open(rel) as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
    return writer.commit(extra)


def settings_dict(settings: LoopSettings) -> dict[str, Any]:
    return asdict(settings)


def is_finite(value: float) -> bool:
    return math.isfinite(value)
