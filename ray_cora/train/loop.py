"""The training loop shared by mDPR and mGEN, and the one function that starts Ray Train.

A *task* (``MDPRTask``, ``MGENTask``) knows its model: ``build()`` makes it, ``collate(examples,
epoch=)`` turns a list of example dicts into CPU tensors (negatives and passages drawn for that
epoch), ``loss(model, batch)`` is the forward pass, ``dev_metrics(model, examples, device,
metric=)`` scores the model on dev examples, and ``export(model, folder)`` saves the result.
Everything else is here:

- AdamW (no weight decay on biases and LayerNorm weights) with linear warm-up then linear decay;
- gradient accumulation (``no_sync`` on the inner micro-batches under DDP), gradient clipping,
  bf16 autocast on GPU;
- :func:`train_worker`, the Ray Train worker function: resumes from ``ray.train.get_checkpoint()``,
  reads its shard with ``ray.train.get_dataset_shard``, takes exactly ``steps_per_epoch`` steps per
  epoch on every worker (so every worker calls ``ray.train.report`` the same number of times) and
  reports a checkpoint every ``checkpoint_every`` steps and at the end of each epoch, then waits
  until the Ray Train controller has *committed* it (:func:`wait_until_committed`);
- with dev examples, rank 0 scores the model at each epoch end (:class:`~ray_cora.train.selection.DevTracker`,
  CORA's rule); the tracker's state goes into every checkpoint's ``progress.json`` and the checkpoint
  of a new best reports :data:`KEPT_SCORE` = the number of bests so far (0 on every other one), so
  ``CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=KEPT_SCORE, "max")`` keeps the best
  and the latest checkpoint (Ray never deletes the latest, which resuming needs);
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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ray_cora import faults, storage
from ray_cora.errors import ConfigError
from ray_cora.runtime import worker_runtime_env
from ray_cora.train.progress import LogSettings, ProgressMeter, format_duration, resume_line
from ray_cora.train.progress import say as print_line
from ray_cora.train.selection import DevTracker, SelectionRule
from ray_cora.train.tracking import MLflowRun, tracking_callbacks

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")
# The checkpoint score Ray Train keeps the best checkpoint by. Not float("-inf") on the others:
# Ray's checkpoint-manager snapshot is pydantic JSON, which writes -inf as null, and a restarted
# driver then fails comparing None scores.
KEPT_SCORE = "kept_score"


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
    def collate(self, examples: list[dict[str, Any]], *, epoch: int = 0) -> Any: ...
    def loss(self, model: Any, batch: Any, device: Any) -> Any: ...
    def dev_metrics(self, model: Any, examples: Sequence[dict[str, Any]], device: Any, *,
                    metric: str) -> dict[str, float]: ...
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


def load_progress(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, PROGRESS_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def score_dev(task: Task, model: Any, examples: Sequence[dict[str, Any]], device: Any, *,
              metric: str) -> dict[str, float]:
    """``task.dev_metrics`` on the model inside any DDP wrapper, in eval mode without gradients
    (no dropout, no DDP hooks), then back in train mode."""
    import torch

    inner = unwrap(model)
    inner.eval()
    try:
        with torch.no_grad():
            return task.dev_metrics(inner, examples, device, metric=metric)
    finally:
        inner.train()


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
    """Runs on every Ray Train worker (``config``: ``{"task", "settings", "faults", "dev",
    "selection", "log", "log_params"}``; ``faults``, the driver's :class:`~ray_cora.faults.FaultPlan`,
    is for tests; ``dev`` (example dicts) and ``selection`` (a :class:`SelectionRule`) only with dev
    data; ``log`` a :class:`~ray_cora.train.progress.LogSettings`, ``log_params`` the job's options
    for MLflow).

    Rank 0 prints what the run does (:mod:`ray_cora.train.progress`): where it starts or resumes,
    a progress line every ``log.every_steps`` steps and at least every ``log.every_s`` seconds, the
    epoch ends, dev scores and the best-epoch decision, each committed checkpoint. Every worker
    reports the progress metrics to Ray Train at the step-count lines (``ray.train.report`` is a
    collective: all workers call it at the same steps), so the controller (and TensorBoard) sees them.
    """
    import torch

    task: Task = config["task"]
    settings: LoopSettings = config["settings"]
    plan: faults.FaultPlan = config.get("faults", faults.EMPTY)
    dev: list[dict[str, Any]] = config.get("dev") or []
    rule: SelectionRule | None = config.get("selection") if dev else None
    log: LogSettings = config.get("log") or LogSettings()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(settings.seed)

    model = task.build()
    state, progress = None, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(folder)
            progress = load_progress(folder)
        model.load_state_dict(state["model"])
    tracker = DevTracker.from_state(rule, progress.get("selection")) if rule is not None else None
    model = ray.train.torch.prepare_model(model)
    stepper = Stepper(task, model, settings, device)
    if state is not None:
        stepper.load_state(state)
    resumed_from = stepper.step_count
    shard = ray.train.get_dataset_shard("train")
    micro = settings.micro_batch(world)
    meter = ProgressMeter(job=log.job, total_steps=settings.total_steps, steps_per_epoch=settings.steps_per_epoch,
                          every_steps=log.every_steps, every_s=log.every_s, start_step=resumed_from)
    mlflow_run = MLflowRun(log, config.get("log_params") or {})

    def say(line: str) -> None:
        if rank == 0:
            print_line(line)

    if checkpoint is not None:
        say(resume_line(log.job, checkpoint=checkpoint_uri(checkpoint, log), step=resumed_from,
                        total_steps=settings.total_steps, steps_per_epoch=settings.steps_per_epoch))
    else:
        say(f"{log.job}: training {settings.total_steps} steps ({settings.epochs} epoch(s) of "
            f"{settings.steps_per_epoch}, {settings.batch_size} examples per step over {world} worker(s)); "
            f"a line every {log.every_steps or '-'} steps or {log.every_s:g} s; checkpoints in "
            f"{log.run_uri or 'the Ray Train storage path'}")

    def report(metrics: dict[str, Any], *, with_checkpoint: bool, new_best: bool = False) -> None:
        metrics = {**metrics, "resumed_from_step": resumed_from, "world_size": world}
        if tracker is not None:  # the controller orders checkpoints by rank 0's metrics
            metrics[KEPT_SCORE] = tracker.order if new_best else 0
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        name = f"step-{stepper.step_count:08d}"
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_state(tmp, stepper, {**metrics, **({"selection": tracker.state()} if tracker else {})})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                             checkpoint_dir_name=name)
        wait_until_committed()
        say(f"{log.job}: checkpoint {join_uri(log.run_uri, name) if log.run_uri else name} committed "
            f"(step {stepper.step_count}/{settings.total_steps}, epoch {metrics['epoch']})")
        meter.pause_end()  # saving and uploading are not training time

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
            loss = stepper.step([task.collate(b, epoch=epoch) for b in group])
            meter.add(loss=loss, samples=micro * settings.grad_accumulation * world)
            step = stepper.step_count
            last = index == settings.steps_per_epoch - 1
            if last:
                say(meter.epoch_line(epoch=epoch + 1, step=step))
            new_best, dev_scores = False, {}
            if last and tracker is not None and rank == 0:  # the other workers wait in report()
                metric = rule.metric_at(epoch + 1)
                dev_scores = score_dev(task, model, dev, device, metric=metric)
                new_best = tracker.observe(epoch=epoch + 1, step=step, metrics=dev_scores)
                say(dev_line(log.job, epoch=epoch + 1, epochs=settings.epochs, metric=metric,
                             value=dev_scores[metric], new_best=new_best, kept=tracker.kept))
                meter.pause_end()  # dev scoring is not training time
            with_checkpoint = last or bool(settings.checkpoint_every and step % settings.checkpoint_every == 0)
            line_due = rank == 0 and meter.due(step)
            if with_checkpoint or meter.step_due(step) or line_due:
                metrics = {**meter.window(step=step, epoch=epoch + 1, lr=stepper.scheduler.get_last_lr()[0]),
                           **{f"dev_{k}": v for k, v in dev_scores.items()}}
                if line_due:
                    say(meter.line(metrics))
                if rank == 0:
                    mlflow_run.log(metrics, step=step)
                if with_checkpoint or meter.step_due(step):
                    report(metrics, with_checkpoint=with_checkpoint, new_best=new_best)
            if plan:
                inject_step_faults(plan, step, rank=rank, world=world)
        for _ in groups:  # drain the shard so the next epoch starts cleanly
            pass
    say(f"{log.job}: training done at step {stepper.step_count}/{settings.total_steps}, "
        f"{format_duration(meter.clock() - meter.started)} in this attempt"
        f"{f' (resumed at step {resumed_from})' if resumed_from else ''}")
    mlflow_run.close()


def dev_line(job: str, *, epoch: int, epochs: int, metric: str, value: float, new_best: bool,
             kept: dict[str, Any] | None) -> str:
    """The best-dev-epoch decision at an epoch end.

    >>> dev_line("train-mgen", epoch=2, epochs=3, metric="em", value=0.25, new_best=False,
    ...          kept={"epoch": 1, "step": 4, "metric": "em", "value": 0.5})
    'train-mgen: epoch 2/3 dev em 0.2500: best stays epoch 1 (em 0.5000), this checkpoint is not kept'
    """
    if new_best:
        return f"{job}: epoch {epoch}/{epochs} dev {metric} {value:.4f}: new best, this checkpoint is kept"
    best = f"epoch {kept['epoch']} ({kept['metric']} {kept['value']:.4f})" if kept else "none yet"
    return f"{job}: epoch {epoch}/{epochs} dev {metric} {value:.4f}: best stays {best}, this checkpoint is not kept"


def join_uri(root: str, name: str) -> str:
    """``root/name`` for a local path or a URI.

    >>> join_uri("s3://b/out/ray-train/", "step-00000004")
    's3://b/out/ray-train/step-00000004'
    """
    return f"{root.rstrip('/')}/{name}"


def checkpoint_uri(checkpoint: Any, log: LogSettings) -> str:
    """Where a Ray Train checkpoint is, as the user named the storage (``s3://…`` kept)."""
    name = os.path.basename(str(checkpoint.path).rstrip("/"))
    return join_uri(log.run_uri, name) if log.run_uri else str(checkpoint.path)


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


def fit(task: Task, settings: LoopSettings, dataset: Any, *, out: str, run: RunSettings, name: str,
        dev: Sequence[dict[str, Any]] = (), selection: SelectionRule | None = None,
        log: LogSettings | None = None, log_params: dict[str, Any] | None = None,
        tensorboard_dir: str | None = None) -> Any:
    """Train ``task`` with ``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU); Ray Train state and
    checkpoints go to ``<out>/<name>/`` on any storage URI. Rerunning with the same ``out`` resumes
    from the latest checkpoint there. Returns the Ray Train ``Result``. The fault plan in force
    (:func:`ray_cora.faults.current`, tests only) travels to the workers in ``train_loop_config``.

    With ``dev`` examples and a ``selection`` rule, rank 0 scores each epoch and Ray keeps the best
    checkpoint and the latest (:func:`kept_checkpoint` finds the best); without, the
    ``run.keep_checkpoints`` latest. The dev examples travel in ``train_loop_config``: the driver
    has read and checked them already, and a worker on another node may not see the driver's files.

    ``log`` says how rank 0 reports progress (its ``run_uri`` defaults to ``<out>/<name>``) and
    MLflow; ``log_params`` are the options MLflow records; ``tensorboard_dir`` a local folder that
    the Ray Train controller writes TensorBoard scalars to (:mod:`ray_cora.train.tracking`).
    """
    if bool(dev) != (selection is not None):
        raise ValueError("fit(): give dev examples and a selection rule together")

    plan = faults.current()
    # A test that stops every worker on purpose wants the run to stop, not to be retried.
    max_failures = 0 if plan.get(faults.TRAIN_FAIL_AFTER_STEP) is not None else run.max_failures
    root = storage.resolve(out)
    if selection is not None:
        checkpoint_config = CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=KEPT_SCORE,
                                             checkpoint_score_order="max")
    else:
        checkpoint_config = CheckpointConfig(num_to_keep=run.keep_checkpoints)
    resources = {"CPU": run.cpus_per_worker}
    if run.use_gpu:
        resources["GPU"] = 1
    log = log or LogSettings()
    if not log.run_uri:
        log = replace(log, run_uri=root.join(name).uri)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"task": task, "settings": settings, "faults": plan, "dev": list(dev),
                           "selection": selection, "log": log, "log_params": dict(log_params or {})},
        scaling_config=ScalingConfig(num_workers=run.num_workers, use_gpu=run.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=root.path, storage_filesystem=root.fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=checkpoint_config, callbacks=tracking_callbacks(tensorboard_dir),
                             worker_runtime_env=worker_runtime_env()),
        datasets={"train": dataset},
    )
    return trainer.fit()


def load_checkpoint_model(task: Task, checkpoint: Any) -> tuple[Any, dict[str, Any]]:
    """The model of a Ray Train checkpoint (built on the driver, eval mode) and its progress."""
    model = task.build()
    with checkpoint.as_directory() as folder:
        state = load_state(folder)
        progress = load_progress(folder)
    model.load_state_dict(state["model"])
    return model.eval(), progress


def load_final_model(task: Task, result: Any) -> tuple[Any, dict[str, Any]]:
    """The model of the run's last checkpoint and that checkpoint's progress."""
    if result.checkpoint is None:
        raise ConfigError("training reported no checkpoint; see the Ray Train logs above")
    return load_checkpoint_model(task, result.checkpoint)


def read_progress(checkpoint: Any) -> dict[str, Any]:
    """A checkpoint's ``progress.json`` alone (not its weights and optimizer state)."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{PROGRESS_FILE}") as stream:
        return json.loads(stream.read().decode("utf-8"))


def kept_checkpoint(result: Any) -> Any:
    """The best-scored checkpoint Ray Train kept (:data:`KEPT_SCORE`, highest), for a run with dev data."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if isinstance(m.get(KEPT_SCORE), (int, float))]
    if not scored:
        raise ConfigError("training kept no dev-scored checkpoint; see the Ray Train logs above")
    return max(scored, key=lambda cm: cm[1][KEPT_SCORE])[0]


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
