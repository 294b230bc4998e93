"""Training logs: ``metrics.jsonl``, TensorBoard events and a progress bar (or plain lines).

``DIR/metrics.jsonl`` holds one JSON object per line, flushed as it is written:

    {"type": "train", "iteration": 20, "epoch": 0, "lr": 0.001, "loss": 1.23,
     "loss_objectness": 0.3, "loss_rpn_box_reg": 0.1, "loss_classifier": 0.6, "loss_box_reg": 0.2,
     "time": 0.41}
    {"type": "skip", "iteration": 21, "epoch": 0, "losses": {"loss_classifier": null, ...},
     "consecutive": 1}                        # a step skipped because a loss was not finite
    {"type": "eval", "iteration": 100, "mAP": 0.71, "metric": "voc", "per_class": {...},
     "val_loss": 1.4, "val_loss_objectness": 0.3, ...}   # validation losses: engine/validation.py

``iteration`` counts optimizer steps taken (1 after the first step). Train records are written every
``log_every`` iterations (and at the last one); their losses and ``time`` (seconds per iteration)
are means over the iterations since the previous record. TensorBoard scalars go to ``DIR/tb/``
under ``train/<name>`` and ``eval/<name>``, and the validation losses ``val_<loss name>`` of an
eval record under ``val/<loss name>`` (beside ``train/<loss name>``).
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fasterrcnn.io import atomic_write_text

__all__ = ["MetricsLogger", "json_safe", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed run, is dropped)."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf floats as None, nested dicts and lists too (JSON has no NaN; e.g. the AP of a
    class without ground truth)."""
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class MetricsLogger:
    """Writes metrics.jsonl and TensorBoard events and shows progress.

    Args:
        output_dir: the run's folder (created if needed).
        max_iters: total iterations, for the progress bar and the ETA.
        start_iteration: iterations already done (resume); records after it are dropped from an
            existing metrics.jsonl, and TensorBoard events after it are purged.
        log_every: iterations between train records.
        quiet: print one plain line per train record instead of a progress bar.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        max_iters: int,
        start_iteration: int = 0,
        log_every: int = 20,
        quiet: bool = False,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.max_iters = max_iters
        self.log_every = max(1, log_every)
        self.quiet = quiet
        self.path = self.output_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= start_iteration] if start_iteration else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.records: list[dict[str, Any]] = kept
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = SummaryWriter(
            log_dir=str(self.output_dir / "tb"), purge_step=start_iteration + 1 if start_iteration else None
        )
        self._window: list[tuple[dict[str, float], float]] = []
        self._run_seconds, self._run_iters = 0.0, 0  # for the ETA: mean over this process's iterations
        self._bar = None
        if not quiet:
            self._bar = _TrainingBar(total=max_iters, initial=start_iteration, dynamic_ncols=True, file=sys.stderr)

    def set_max_iters(self, max_iters: int) -> None:
        """A new run length (a time budget's estimate): the ETA, the last record and the bar's total follow it."""
        self.max_iters = max_iters
        if self._bar is not None:
            self._bar.total = max_iters
            self._bar.refresh()

    # -- train ---------------------------------------------------------------------------------------
    def log_step(self, iteration: int, epoch: int, lr: float, losses: dict[str, float], seconds: float) -> None:
        """One optimizer step done (``iteration`` >= 1); ``losses`` includes the total ``loss``."""
        self._window.append((losses, seconds))
        self._run_seconds += seconds
        self._run_iters += 1
        if self._bar is not None:
            self._bar.set_description_str(f"epoch {epoch}", refresh=False)
            self._bar.set_postfix_str(f"loss {losses['loss']:.3f} lr {lr:.1e}", refresh=False)
            self._bar.terms = " ".join(f"{_BAR_NAMES.get(k, k)} {v:.3f}" for k, v in losses.items() if k != "loss")
            self._bar.update(iteration - self._bar.n)
        if iteration % self.log_every and iteration != self.max_iters:
            return
        n = len(self._window)
        names = list(self._window[-1][0])
        means = {k: sum(w[0].get(k, 0.0) for w in self._window) / n for k in names}
        time_per_iter = sum(w[1] for w in self._window) / n
        self._window = []
        record = {"type": "train", "iteration": iteration, "epoch": epoch, "lr": lr, **means, "time": time_per_iter}
        self._write(record)
        for k, v in means.items():
            self._writer.add_scalar(f"train/{k}", v, iteration)
        self._writer.add_scalar("train/lr", lr, iteration)
        self._writer.add_scalar("train/time", time_per_iter, iteration)
        if self.quiet:
            eta = _format_eta(self._run_seconds / self._run_iters * (self.max_iters - iteration))
            losses_text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
            self.info(
                f"iter {iteration}/{self.max_iters} epoch {epoch} {losses_text} lr {lr:.3e} "
                f"{time_per_iter:.3f} s/it eta {eta}"
            )

    def log_skip(self, iteration: int, epoch: int, losses: dict[str, float], consecutive: int) -> None:
        """A step skipped because a loss was not finite (``iteration`` is the step's number, 1-based)."""
        record = {
            "type": "skip",
            "iteration": iteration,
            "epoch": epoch,
            "losses": dict(losses),
            "consecutive": consecutive,
        }
        self._write(record)
        shown = ", ".join(f"{k}={v}" for k, v in losses.items())
        self.info(f"iteration {iteration}: non-finite loss ({shown}); step skipped ({consecutive} in a row)")

    # -- eval ----------------------------------------------------------------------------------------
    def log_eval(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Evaluation results at ``iteration``: scalars, ``metric`` and ``per_class`` are recorded."""
        record = {"type": "eval", "iteration": iteration}
        for k, v in metrics.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                record[k] = v
            elif k == "per_class":
                record[k] = {name: float(ap) for name, ap in v.items()}
        self._write(record)
        for k, v in record.items():
            if k not in ("type", "iteration") and isinstance(v, (int, float)):
                # validation losses beside train/<loss>: val_loss_classifier -> val/loss_classifier
                tag = f"val/{k[len('val_'):]}" if k.startswith("val_loss") else f"eval/{k}"
                self._writer.add_scalar(tag, v, iteration)
        for name, ap in record.get("per_class", {}).items():
            if ap is not None and math.isfinite(ap):
                self._writer.add_scalar(f"eval_per_class/{name}", ap, iteration)
        headline = ", ".join(
            f"{k} {record[k]:.4f}" for k in ("mAP", "AP", "AP50", "AP75", "val_loss") if isinstance(record.get(k), float)
        )
        self.info(f"evaluation at iteration {iteration}: {headline}")

    # -- misc ----------------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._writer.close()
        self._file.close()

    def _write(self, record: dict[str, Any]) -> None:
        record = json_safe(record)
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The loss terms' names on the progress bar (others keep their names).
_BAR_NAMES = {"loss_objectness": "obj", "loss_rpn_box_reg": "rpn_box", "loss_classifier": "cls", "loss_box_reg": "box"}


class _TrainingBar(tqdm):
    """The training progress bar, readable in an 80-column terminal:

        epoch 3  12%|███▍               | 1200/10000 [02:01<14:48, loss 0.853 lr 2.0e-02]

    The epoch, the iteration, the elapsed time and the ETA, the total loss and the learning rate always
    fit; the loss terms (``terms``: "obj 0.101 rpn_box 0.050 cls 0.501 box 0.201") follow the lr when
    the line still leaves the bar 10 cells, from about 120 columns (always when ``ncols`` is None, e.g.
    in a file). The ETA is the mean rate of this process's iterations (no smoothing: a steady estimate).
    """

    BAR_FORMAT = "{desc}{percentage:4.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
    terms = ""

    def __init__(self, **kwargs) -> None:
        super().__init__(bar_format=self.BAR_FORMAT, unit="it", smoothing=0, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        meter = super().format_dict
        if self.terms:
            wide = {**meter, "postfix": f"{meter['postfix']} {self.terms}"}
            # with ncols None, tqdm draws a 10-cell bar and trims nothing
            if meter["ncols"] is None or len(self.format_meter(**{**wide, "ncols": None})) <= meter["ncols"]:
                return wide
        return meter
