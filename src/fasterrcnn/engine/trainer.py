"""The training loop: SGD with momentum, warm-up + step LR, checkpoints, exact resume, logging, evaluation.

One iteration = one batch: forward (the model returns its loss dict), total loss = sum of the
losses, backward, optional gradient-norm clipping, ``optimizer.step()``, ``scheduler.step()``.
A batch whose total loss or gradient is not finite is skipped (no optimizer step, the iteration still
counts, so the schedule and the data order are those of a run without the bad batch's update; the
running statistics of BatchNorm layers, updated by the forward pass, are put back) and logged as a
``skip`` record; ``max_nonfinite_steps`` such batches in a row stop training with
``NonFiniteLossError``, leaving the last checkpoint as it was (its weights are the last good ones).

SIGINT / SIGTERM during the loop: the current iteration is finished, ``checkpoints/last.pt`` is
written and ``TrainingInterrupted`` is raised (``engine/interrupt.py``); ``resume`` continues exactly.
Any other exception in the loop or in the final evaluation (a bad file found late, a full disk, a bug)
first writes ``last.pt`` at the current iteration when the weights are finite, then raises
``TrainingFailed`` naming the cause and the checkpoint. ``last.pt`` is written before the final
evaluation, so a failing evaluation costs no training. A checkpoint write killed half-way (SIGKILL,
power loss) leaves the previous file whole (``io.atomic_save``).

Optimizer: ``torch.optim.SGD(lr, momentum, weight_decay)`` over every parameter that requires a
gradient, weight decay included on biases and norm parameters (the paper's Caffe solver does the
same for all layers it trains; frozen BatchNorm layers have no trainable parameters anyway).

Output folder::

    DIR/checkpoints/last.pt           every checkpoint_every iterations and at the end
    DIR/checkpoints/iter_XXXXXXX.pt   the same checkpoints, the newest keep_checkpoints kept
    DIR/checkpoints/best.pt           the checkpoint with the best validation mAP (COCO: AP)
    DIR/metrics.jsonl, DIR/tb/        see engine/logging.py
    DIR/results.csv                   one row per evaluation (engine/logging.py)
    DIR/results.png                   losses (train and validation) and metrics, redrawn at every
                                      evaluation and at the end (evaluation/plots.py plot_results)
    DIR/confusion_matrix.png, .csv,   the latest evaluation's report (engine/report.py), when
    DIR/per_class.csv, samples.jpg    ``evaluate`` returns one under "report"

Exact resume: the data order and the augmentation of every sample are functions of
``(seed, epoch, index)`` (``data.loader.build_loader``); the batches of the current epoch that were
already consumed are skipped without being loaded; the model's sampling generator (``model.generator``
when it has one) and torch's / Python's / NumPy's global RNG states are saved in every checkpoint
and restored. On the CPU with ``num_workers=0`` a resumed run therefore ends with weights identical
to an uninterrupted run with the same seed (and the same number of threads: the order of float sums
in torch's CPU kernels depends on it).

Sampling: a model whose ``forward`` takes a ``generator`` argument (``FasterRCNN``) gets one
generator per image, seeded from ``(seed, iteration, position of the image in the global batch)``:
an image's anchors and RoIs are sampled the same way whichever process handles it.

Data parallel (started by ``torchrun``, see ``engine/distributed.py``): every process trains the
model wrapped in ``DistributedDataParallel`` on its shard of each global batch of
``batch_size x processes`` images (``data.loader.ShardedBatchSampler``); gradients are averaged over
the processes. The optimizer's learning rate is ``lr x processes`` (the linear scaling rule) unless
``scale_lr`` is False. Only rank 0 writes checkpoints (the unwrapped model's state dict, loadable by
one process), metrics.jsonl, TensorBoard events and plots; the logged losses are means over the
processes; a non-finite loss on any process skips the step on all of them. ``evaluate`` is called on
every process (``engine.evaluator.evaluate_model`` shards the images and scores on rank 0).
The gradient of the global batch equals that of one process with the whole batch when the losses'
normalisers are the same on every process: every image contributes the same number of sampled
anchors (``rpn_batch_size_per_image``) and RoIs (``box_batch_size_per_image``, true unless an image
has fewer candidate proposals), the processes' padded batches have the same size, and BatchNorm
statistics are synchronised (``sync_bn``) or frozen.

Schedule: ``build_scheduler``'s warm-up and LR steps, in iterations. A trainer given ``schedule_length``
(the run length they were written for, e.g. the preset's max_iters) places them on its own run length
(``engine.schedule.scale_schedule``), except the fields in ``fixed_schedule`` (set by the user); its
``config`` (checkpoints, config.json) then holds the placed values. The schedule is printed when training starts.

Time budget (``config.time`` minutes): a ``TimeBudget`` (``engine/budget.py``) starts its clock with the loop,
re-estimates after iterations the ``max_iters`` that fit in the time left (the warm-up and LR steps placed on
it), ends the run at the deadline after the current iteration, and is saved in every checkpoint (``training["time"]``),
so a resumed run continues the time spent. Data-parallel processes all read rank 0's clock, so they stop together.

Weight averaging (``ema_decay``, ``engine/ema.py``): after every optimizer step the average is updated;
validation, ``best.pt`` and ``last.pt`` (their ``model``) hold the average, the checkpoint's training state
the weights being trained (``ema``), so resuming is exact. Scale jitter (``scale_jitter``): every batch
is resized to a short side drawn from a range of the model transform's ``min_size``, seeded by
(seed, iteration) like the sampling, so resuming is exact too.

Mixed precision (``amp``): the forward runs under ``torch.autocast`` in bfloat16 (CUDA or CPU) or
float16 (CUDA, with a ``GradScaler`` whose state is checkpointed); the model keeps anchors, box
coding, NMS and the losses in float32. Validation runs in float32 (``fasterrcnn eval --amp`` measures
the mixed-precision detections).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fasterrcnn.config import TrainConfig, check_config
from fasterrcnn.device import autocast_context, autocast_dtype, keep_freed_memory
from fasterrcnn.engine.checkpoint import Checkpoint, CheckpointFolder, get_rng_state, set_rng_state, weights_are_finite
from fasterrcnn.engine.interrupt import StopRequest, TrainingInterrupted
from fasterrcnn.engine.ema import ModelEMA
from fasterrcnn.engine.budget import TimeBudget, agreed_clock
from fasterrcnn.engine.schedule import WarmupStepLR, describe_schedule, free_fields, iterations, scale_schedule
from fasterrcnn.errors import ConfigError, DataError, FasterRCNNError
from fasterrcnn.io import atomic_write_text

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "TrainingFailed",
    "TrainState",
    "TrainingInterrupted",
    "build_optimizer",
    "build_scheduler",
]


class NonFiniteLossError(FasterRCNNError):
    """Training stopped: too many consecutive iterations had a NaN or infinite loss (or gradient)."""


class TrainingFailed(FasterRCNNError):
    """Training ended with an exception (its ``__cause__``) at ``iteration``; ``checkpoint`` is the
    ``last.pt`` written first, or None (weights not finite, the write failed, or a process other than rank 0)."""

    def __init__(self, cause: BaseException, iteration: int, checkpoint: Path | None, notes: list[str]):
        self.iteration = iteration
        self.checkpoint = checkpoint
        what = str(cause) if isinstance(cause, FasterRCNNError) else f"{type(cause).__name__}: {cause}"
        super().__init__("; ".join([f"training stopped at iteration {iteration}: {what}", *notes]))


_clock = time.monotonic  # the time budget's clock, seconds; tests replace it with a fake clock


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients (NaN / inf when one of them is)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({type(value).__name__})"


def _same_layout(value: Any, reference: Any, what: str) -> None:
    """Raise TypeError unless ``value`` (from a checkpoint) is laid out like ``reference`` (a fresh state dict):
    mappings where it has mappings (their common keys alike), lists of finite numbers where it has lists or numbers."""
    if isinstance(reference, Mapping):
        if not isinstance(value, Mapping):
            raise TypeError(f"{what} is {_short(value)}, expected a mapping")
        for key in reference.keys() & value.keys():
            _same_layout(value[key], reference[key], f"{what}.{key}")
    elif isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{what} is {_short(value)}, expected a list")
        for item in value:
            _same_layout(item, reference[0] if reference else 0, f"{what}[]")
    elif isinstance(reference, (int, float)) and not isinstance(reference, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{what} is {_short(value)}, expected a finite number")


@dataclass
class TrainState:
    """Where training stands. ``iteration``: batches processed; ``epoch_iteration``: of them, in ``epoch``."""

    iteration: int = 0
    epoch: int = 0
    epoch_iteration: int = 0
    best_metric: float | None = None


def build_optimizer(model: torch.nn.Module, config: TrainConfig, lr: float | None = None) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the parameters that require a gradient (``lr``: default ``config.lr``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.SGD(params, lr=config.lr if lr is None else lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, length: int | None = None) -> WarmupStepLR:
    """Linear warm-up over ``warmup_iters`` from ``warmup_factor``, then ``lr_gamma`` at each of ``lr_steps``
    (``lr_schedule`` "step") or half a cosine to 0 at ``length`` iterations ("cosine"; default ``max_iters``)."""
    cosine = config.lr_schedule == "cosine"
    return WarmupStepLR(
        optimizer,
        warmup_iters=config.warmup_iters,
        warmup_factor=config.warmup_factor,
        lr_steps=config.lr_steps,
        gamma=config.lr_gamma,
        cosine_iters=(config.max_iters if length is None else length) if cosine else None,
    )


class _NullLogger:
    """The logger of the processes other than rank 0: they write nothing."""

    records: list = []

    def log_step(self, *args, **kwargs) -> None:
        pass

    log_skip = log_eval = info = set_max_iters = log_step

    def close(self) -> None:
        pass


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


class Trainer:
    """Trains ``model`` on ``dataset`` and writes checkpoints, metrics and plots under ``output_dir``.

    Args:
        model: a ``FasterRCNN`` (anything with a ``config`` ModelConfig, returning a dict of scalar
            losses in train mode, ``model(images, targets)``, and detections in eval mode).
        dataset: training samples ``(image, target)``, a ``data.DetectionDataset``; its transforms
            (e.g. ``RandomHorizontalFlip``) are applied with the loader's per-sample seeds.
        config: the ``TrainConfig``.
        output_dir: the run's folder (checkpoints in ``output_dir/checkpoints``).
        preset: the preset name stored in checkpoints beside the model's and this training's configs.
        class_names: the C foreground class names (label ``l`` is ``class_names[l - 1]``).
        label_to_category_id: COCO data: label -> the JSON's category id (stored in checkpoints).
        evaluate: optional ``evaluate(model) -> metrics`` for periodic validation (the metrics
            dict has ``mAP`` or ``AP``, see ``engine.evaluator``; its ``val_loss*`` entries, e.g.
            from ``engine.validation.validation_losses``, are drawn in results.png; an
            ``engine.report.EvaluationReport`` under ``"report"`` is written to the run folder and
            taken out of the metrics).
        device, num_workers, quiet: where to train, data-loading processes, plain log lines.
            In a data-parallel run, ``device`` is this process's (``engine.distributed.init_distributed``).
        schedule_length: the run length (iterations) that ``config``'s warm-up and lr_steps were written for;
            when given they are placed on this run's length, except the ``fixed_schedule`` fields. None: as given.
        clock: seconds from an arbitrary origin for the time budget (default: ``time.monotonic``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset,
        *,
        config: TrainConfig,
        output_dir: str | Path,
        preset: str | None,
        class_names: list[str] | tuple[str, ...],
        label_to_category_id: Mapping[int, int] | None = None,
        evaluate: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        quiet: bool = False,
        schedule_length: int | None = None,
        fixed_schedule: Collection[str] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        from fasterrcnn.data.loader import build_loader
        from fasterrcnn.engine import distributed

        check_config(config)
        if len(dataset) == 0:
            raise ConfigError("the training set has no images")
        self.config = config
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for the large tensors of each step (device.keep_freed_memory)
        self.amp_dtype = autocast_dtype(config.amp_dtype if config.amp else None, self.device)
        self.rank, self.world_size = distributed.get_rank(), distributed.get_world_size()
        self.is_main = self.rank == 0
        model = model.to(self.device)
        if config.sync_bn and self.world_size > 1:
            model = distributed.convert_sync_batchnorm(model, self.device)
        self.model = model  # the model itself: checkpoints, evaluation
        self.train_model = distributed.wrap_model(model, self.device)  # DistributedDataParallel(model) or model
        self.output_dir = Path(output_dir)
        self.checkpoints = CheckpointFolder(self.output_dir / "checkpoints", keep=config.keep_checkpoints)
        self.preset = preset
        self.class_names = list(class_names)
        self.label_to_category_id = dict(label_to_category_id) if label_to_category_id is not None else None
        self.evaluate = evaluate
        self.quiet = quiet
        self.loader = build_loader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=num_workers,
            seed=config.seed,
            num_replicas=self.world_size,
            rank=self.rank,
        )
        self.loader.batch_sampler.set_epoch(0)
        self.batches_per_epoch = len(self.loader.batch_sampler)
        # the run's length as configured; with a time budget max_iters is re-estimated, this is not
        self.configured_length = config.max_iters if config.epochs is None else config.epochs * self.batches_per_epoch
        if schedule_length is not None and schedule_length != self.configured_length:  # fixed_schedule: never placed
            self.config = config = scale_schedule(config, self.configured_length, schedule_length, free_fields(fixed_schedule))
        self.lr = config.lr * self.world_size if config.scale_lr else config.lr  # linear scaling rule
        self.optimizer = build_optimizer(self.model, config, lr=self.lr)
        self.scheduler = build_scheduler(self.optimizer, config, self.configured_length)
        self.budget = None
        if config.time is not None:
            clock = agreed_clock(clock if clock is not None else _clock, self.device)
            self.budget = TimeBudget(config, self.configured_length, self.scheduler, fixed=fixed_schedule, lr=self.lr, clock=clock)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.state = TrainState()
        self._saved_at: int | None = None  # the iteration of the last.pt written (or resumed from)
        self.last_metrics: dict[str, Any] | None = None
        self.evaluations_since_best = 0  # for config.patience; counted from this session's start
        if hasattr(self.model, "generator") and self.model.generator is None:
            self.model.generator = torch.Generator()  # the model samples anchors / RoIs with it
        generator = getattr(self.model, "generator", None)
        self.model_generator = generator if isinstance(generator, torch.Generator) else None
        self.per_image_generators = "generator" in inspect.signature(self.model.forward).parameters
        self.ema = ModelEMA(self.model, config.ema_decay) if config.ema_decay is not None else None
        self._stop = StopRequest()  # replaced by the active one while train() runs its loop
        self._seed_rngs()

    @property
    def max_iters(self) -> int:
        """The run's length in iterations: the configured one, or the time budget's current estimate."""
        return self.configured_length if self.budget is None else self.budget.max_iters

    # -- state ---------------------------------------------------------------------------------------
    def _seed_rngs(self) -> None:
        import random

        import numpy as np

        from fasterrcnn.data.loader import mix_seed

        seed = self.config.seed
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.model_generator is not None:
            self.model_generator.manual_seed(mix_seed(seed, 0x5A3))

    def checkpoint(self) -> Checkpoint:
        """Everything needed to rebuild the model (eval / predict) and to resume exactly."""
        rng = get_rng_state()
        if self.model_generator is not None:
            rng["model_generator"] = self.model_generator.get_state()
        training = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.state.iteration,
            "epoch": self.state.epoch,
            "epoch_iteration": self.state.epoch_iteration,
            "best_metric": self.state.best_metric,
            "rng": rng,
        }
        if self.scaler is not None:
            training["scaler"] = self.scaler.state_dict()
        weights = self.model.state_dict()
        if self.ema is not None:  # the average is the model; the weights being trained are kept to resume
            training["ema"] = {"updates": self.ema.updates, "model": weights}
            weights = self.ema.state_dict()
        if self.budget is not None:
            training["time"] = self.budget.state_dict()
        return Checkpoint(
            model=weights,
            preset=self.preset,
            model_config=self.model.config,
            train_config=self.config,
            class_names=tuple(self.class_names),
            label_to_category_id=self.label_to_category_id,
            training=training,
        )

    def resume(self, checkpoint: Checkpoint, path: str | Path) -> None:
        """Continue from ``checkpoint`` (``Checkpoint.read(path)``; errors name ``path``)."""
        from fasterrcnn.modeling.backbones.weights import load_state_dict_strictly

        checkpoint.require_training(path)
        if list(checkpoint.class_names) != self.class_names:
            raise DataError(
                path,
                f"was trained on classes {', '.join(checkpoint.class_names)}, "
                f"the training data has {', '.join(self.class_names)}",
            )
        state = checkpoint.training
        ema = state.get("ema")  # with weight averaging the file's model is the average: the trained weights are here
        if ema is not None and not (isinstance(ema, dict) and isinstance(ema.get("model"), dict) and isinstance(ema.get("updates"), int)):
            raise DataError(path, "holds a weight average ('ema') that is not a model's weights and an update count")
        load_state_dict_strictly(self.model, checkpoint.model if ema is None else ema["model"], path, "this model")
        if self.ema is not None:
            self.ema.load(checkpoint.model, 0 if ema is None else ema["updates"])
        try:
            self._restore(checkpoint.training)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(path, f"holds a training state that does not fit this model / configuration ({first_line})") from None

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's training state; a value of the wrong type or shape raises (``resume`` names the file)."""
        _same_layout(state["scheduler"], self.scheduler.state_dict(), "scheduler")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # torch does not check the shapes of the optimizer's buffers
            for param in group["params"]:
                for name, value in self.optimizer.state.get(param, {}).items():
                    if not isinstance(value, torch.Tensor) or (value.ndim and value.shape != param.shape):
                        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                        raise ValueError(f"optimizer state {name!r} is {shape} for a parameter of shape {list(param.shape)}")
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            _same_layout(state["scaler"], self.scaler.state_dict(), "scaler")
            self.scaler.load_state_dict(state["scaler"])
        counts = {"iteration": state["iteration"], "epoch": state["epoch"], "epoch_iteration": state.get("epoch_iteration", 0)}
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} is {_short(value)}, expected a whole number >= 0")
        best = state.get("best_metric")
        if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or not math.isfinite(best)):
            raise ValueError(f"best_metric is {_short(best)}, expected a finite number or None")
        self._saved_at = counts["iteration"]
        self.state = TrainState(iteration=counts["iteration"], epoch=counts["epoch"], epoch_iteration=counts["epoch_iteration"], best_metric=best)
        if "time" in state:  # checked, budget or not; time already spent counts; a budget given on resume starts now
            spent = state["time"]
            numbers = [spent["elapsed"], spent["budget"], spent["max_iters"]]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in numbers):
                raise ValueError(f"time is {_short(spent)}, expected finite numbers >= 0")
            if self.budget is not None:
                self.budget.load_state_dict(spent)
        if self.scheduler.cosine_iters is not None and self.budget is None:
            self.scheduler.place(self.scheduler.warmup_iters, self.scheduler.lr_steps, self.max_iters)  # a longer run
        rng = state["rng"]
        set_rng_state(rng)
        if self.model_generator is not None and "model_generator" in rng:
            self.model_generator.set_state(rng["model_generator"])

    def save(self, *names: str) -> None:
        """Write the current state to ``checkpoints/<name>`` for each name (serialised once; rank 0 only)."""
        if self.is_main:
            self.checkpoints.write(self.checkpoint(), *names)
            if "last.pt" in names:
                self._saved_at = self.state.iteration

    # -- loop ----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train until ``max_iters``; returns ``{"iteration", "epoch", "metrics" (last eval or None), "best_metric"}``."""
        from fasterrcnn.engine import distributed
        from fasterrcnn.engine.logging import MetricsLogger

        config = self.config
        logger = _NullLogger()
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            logger = MetricsLogger(
                self.output_dir,
                max_iters=self.max_iters,
                start_iteration=self.state.iteration,
                log_every=config.log_every,
                quiet=self.quiet,
            )
        try:
            if self.budget is not None:
                self.budget.start(self.state.iteration)
            logger.info(self._describe_schedule())
            if self.state.iteration >= self.max_iters:
                logger.info(f"already trained for {self.state.iteration} iterations (max {self.max_iters})")
            with StopRequest() as self._stop:
                self._loop(logger)
            self.save("last.pt")  # before the final evaluation: a failure there costs no training
            if self.evaluate is not None and (
                not config.eval_every or self.state.iteration % config.eval_every or self.last_metrics is None
            ):
                self._evaluate(logger)
                self.save("last.pt")  # again: the final evaluation may have changed best_metric
            self._plot_losses(logger)
        except (TrainingInterrupted, TrainingFailed):
            raise
        except Exception as e:
            raise self._failed(e) from e
        finally:
            logger.close()
        distributed.barrier()  # every process returns once rank 0 has written the last checkpoint
        return {
            "iteration": self.state.iteration,
            "epoch": self.state.epoch,
            "metrics": self.last_metrics,
            "best_metric": self.state.best_metric,
        }

    def _loop(self, logger) -> None:
        config, state = self.config, self.state
        self.model.train()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # BatchNorm layers update their running statistics during the forward pass, before the loss
        # is known: a skipped batch must leave them as they were (NaN activations would make them
        # NaN for good, and the eval-mode model with them).
        statistics = [
            b for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in m.buffers()
        ]
        nonfinite = 0
        while state.iteration < self.max_iters:
            self.loader.batch_sampler.set_epoch(state.epoch, start_batch=state.epoch_iteration)
            start = time.perf_counter()
            batches = iter(self.loader)
            while (batch := self._next_batch(batches)) is not None:
                images, targets = batch
                images = [image.to(self.device, non_blocking=True) for image in images]
                targets = _to_device(targets, self.device)
                lr = self.optimizer.param_groups[0]["lr"]
                saved = [b.clone() for b in statistics]
                kwargs = {"generator": self._sampling_generators(len(images))} if self.per_image_generators else {}
                with autocast_context(self.device, self.amp_dtype), self._jittered_scale():
                    loss_dict = self.train_model(images, targets, **kwargs)
                loss = sum(loss_dict.values())
                values = self._mean_over_processes(loss_dict)
                self.optimizer.zero_grad(set_to_none=True)
                finite = math.isfinite(sum(values.values()))  # the same decision on every process
                if finite:
                    grad_norm = self._backward_and_step(loss, params)
                    if grad_norm is not None and not math.isfinite(grad_norm):  # a finite loss can still have a NaN gradient
                        finite = False
                        values["grad_norm"] = grad_norm
                    elif self.ema is not None:
                        self.ema.update(self.model)
                if not finite:
                    with torch.no_grad():
                        for buffer, value in zip(statistics, saved):
                            buffer.copy_(value)
                self.scheduler.step()
                state.iteration += 1
                state.epoch_iteration += 1
                if self.budget is not None:
                    self.budget.track(state.iteration, logger)
                seconds = time.perf_counter() - start
                evaluating = bool(config.eval_every and self.evaluate is not None and state.iteration % config.eval_every == 0)
                losses = {"loss": sum(values.values()), **values}
                if finite:
                    nonfinite = 0
                    logger.log_step(state.iteration, state.epoch, lr, losses, seconds, record=evaluating)
                else:
                    nonfinite += 1
                    logger.log_skip(state.iteration, state.epoch, losses, nonfinite)
                    if nonfinite >= config.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"the loss (or its gradient) was not finite for {nonfinite} consecutive iterations "
                            "(try a lower --lr or --grad-clip); the skipped steps left the weights as they were"
                        )
                if evaluating:
                    self._evaluate(logger)
                    self._plot_losses(logger)
                    if config.patience is not None and self.evaluations_since_best >= config.patience:
                        logger.info(
                            f"stopping at iteration {state.iteration}: no better validation metric in {config.patience} "
                            f"evaluations (best {self.state.best_metric:.4f}, kept in best.pt)"
                        )
                        return
                if state.iteration % config.checkpoint_every == 0:
                    periodic = [self.checkpoints.periodic_name(state.iteration)] if config.keep_checkpoints else []
                    self.save(*periodic, "last.pt")
                if self._stop_requested():  # SIGINT / SIGTERM: stop here, resumable
                    raise self._interrupted()
                if state.iteration >= self.max_iters:
                    return
                start = time.perf_counter()
            state.epoch += 1
            state.epoch_iteration = 0

    def _jittered_scale(self):
        """Context: the model's transform resizes this batch to a short side drawn from ``scale_jitter``'s factors
        of its ``min_size`` (and ``max_size``), seeded by (seed, iteration); restored afterwards."""
        import contextlib

        from fasterrcnn.data.loader import mix_seed
        from fasterrcnn.data.transforms import jittered_sizes

        transform = getattr(self.model, "transform", None)
        if self.config.scale_jitter is None or transform is None:
            return contextlib.nullcontext()
        generator = torch.Generator().manual_seed(mix_seed(self.config.seed, 0x5CA, self.state.iteration))
        return transform.resizing_to(*jittered_sizes(transform.min_size, transform.max_size, self.config.scale_jitter, generator))

    # -- schedule ------------------------------------------------------------------------------------------
    def _describe_schedule(self) -> str:
        """One line: the run's length (iterations, epochs x batches or the time budget), warm-up and LR steps."""
        if self.budget is not None:
            length = self.budget.describe()
        elif self.config.epochs is not None:
            length = f"{iterations(self.max_iters)} ({self.config.epochs} epochs x {self.batches_per_epoch} batches)"
        else:
            length = iterations(self.max_iters)
        validation = f"; validation every {iterations(self.config.eval_every)}" if self.evaluate is not None and self.config.eval_every else ""
        return f"schedule: {length}; {describe_schedule(self.scheduler.placed(self.config), self.lr, self.max_iters)}{validation}"

    def _next_batch(self, batches):
        """The loader's next batch, or None at the end of the epoch.

        A signal sent to the whole process group stops the data-loading workers too (engine/interrupt.py):
        when the loop was waiting for their batch, it stops here, before an iteration it cannot run.
        """
        try:
            return next(batches)
        except StopIteration:
            return None
        except RuntimeError:
            if self._stop.signum is None:
                raise
            raise self._interrupted() from None

    def _failed(self, error: Exception) -> TrainingFailed:
        """Writes ``last.pt`` (when the weights are finite and the write itself did not fail) and returns
        the exception that ends training."""
        import traceback

        iteration, checkpoint, notes = self.state.iteration, None, []
        if not self.is_main:
            return TrainingFailed(error, iteration, None, notes)
        if self._saved_at == iteration:  # nothing trained since the last write: last.pt is up to date
            checkpoint = self.checkpoints.last
        elif iteration == 0:
            notes.append("no iteration finished, no checkpoint written")
        elif not weights_are_finite(self.model):
            notes.append("the weights are not finite: last.pt not written")
        else:
            try:
                self.save("last.pt")
                checkpoint = self.checkpoints.last
            except DataError:  # e.g. a full disk, likely the error being reported: the previous files are whole
                notes.append("the checkpoints written before are intact")
        if checkpoint is not None:
            notes.append(f"{checkpoint} holds iteration {iteration}")
        if not isinstance(error, FasterRCNNError):  # not the user's to fix: keep the traceback for a report
            log = self.output_dir / "error.log"
            try:
                atomic_write_text(log, "".join(traceback.format_exception(error)))  # a link there is replaced, never written through
                notes.append(f"traceback in {log}")
            except OSError:
                pass
        return TrainingFailed(error, iteration, checkpoint, notes)

    def _interrupted(self) -> TrainingInterrupted:
        """Writes ``last.pt`` (the iterations done so far), ends the data-loading workers (the signal may
        have reached them too) and returns the exception that ends the loop."""
        self.save("last.pt")
        self.loader.shutdown_workers()
        return TrainingInterrupted(self._stop.signum, self.state.iteration, self.checkpoints.last)

    def _sampling_generators(self, count: int) -> list[torch.Generator]:
        """One CPU generator per image of this process's batch, seeded by (seed, iteration, global position)."""
        from fasterrcnn.data.loader import mix_seed

        first = self.rank * count  # every process has a batch of ``count`` images
        step, seed = self.state.iteration, self.config.seed
        return [torch.Generator().manual_seed(mix_seed(seed, 0x5A3, step, first + j)) for j in range(count)]

    def _mean_over_processes(self, loss_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The losses as floats, averaged over the processes of a data-parallel run."""
        if self.world_size == 1:
            return {name: float(v.detach()) for name, v in loss_dict.items()}
        from fasterrcnn.engine import distributed

        stacked = torch.stack([v.detach().float() for v in loss_dict.values()])
        means = distributed.all_reduce_sum(stacked) / self.world_size
        return dict(zip(loss_dict, means.tolist()))

    def _stop_requested(self) -> bool:
        """Whether a SIGINT / SIGTERM arrived, on any process of a data-parallel run (so all stop together)."""
        requested = self._stop.signum is not None
        if self.world_size == 1:
            return requested
        from fasterrcnn.engine import distributed

        return bool(distributed.all_reduce_sum(torch.tensor([float(requested)], device=self.device)) > 0)

    def _backward_and_step(self, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float | None:
        """Backward pass and optimizer step, unless the gradient is not finite.

        Returns the gradients' global norm (the step was skipped when it is not finite), or None with
        fp16's GradScaler, which skips overflowed steps itself and lowers its scale. In a
        data-parallel run the gradients are already averaged, so every process decides alike.
        """
        clip = self.config.grad_clip_norm
        if self.scaler is None:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip) if clip is not None else _grad_norm(params))
            if math.isfinite(grad_norm):
                self.optimizer.step()
            return grad_norm
        self.scaler.scale(loss).backward()
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(self.optimizer)  # skipped when the fp16 gradients overflowed
        self.scaler.update()
        return None

    def _evaluate(self, logger) -> None:
        from fasterrcnn.engine import distributed
        from fasterrcnn.engine.evaluator import headline

        distributed.broadcast_buffers(self.model)  # every process evaluates rank 0's weights
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.module)
        metrics = dict(self.evaluate(self.model if self.ema is None else self.ema.module))
        report = metrics.pop("report", None)  # confusion matrix, per-class table, samples (rank 0)
        self.model.train()
        if self.ema is not None:
            self.ema.module.eval()
        self.last_metrics = metrics
        logger.log_eval(self.state.iteration, metrics, report)
        if report is not None and self.is_main:
            report.write(self.output_dir)
            if self.state.iteration >= self.max_iters:  # the final evaluation: its table in the log
                logger.info(report.table())
        _, value = headline(metrics)
        if math.isfinite(value) and (self.state.best_metric is None or value > self.state.best_metric):
            self.state.best_metric = value
            self.evaluations_since_best = 0
            self.save("best.pt")
        else:
            self.evaluations_since_best += 1

    def _plot_losses(self, logger) -> None:
        from fasterrcnn.evaluation.plots import plot_results

        if not self.is_main:
            return
        # train records' losses, and the validation losses (val_loss*) and metrics of the eval records
        plot_results([r for r in logger.records if r.get("type") in ("train", "eval")], self.output_dir / "results.png")
