"""Training logs: ``metrics.jsonl``, TensorBoard events and a progress bar (or plain lines).

``DIR/metrics.jsonl`` holds one JSON object per line, flushed as it is written:

    {"type": "train", "iteration": 20, "epoch": 0, "lr": 0.001, "loss": 1.23,
     "loss_objectness": 0.3, "loss_rpn_box_reg": 0.1, "loss_classifier": 0.6, "loss_box_reg": 0.2,
     "time": 0.41}
    {"type": "skip", "iteration": 21, "epoch": 0, "losses": {"loss_classifier": null, ...},
     "consecutive": 1}                        # a step skipped because a loss was not finite
    {"type": "eval", "iteration": 100, "mAP": 0.71, "metric": "voc", "split": "test", "per_class": {...},
     "val_loss": 1.4, "val_loss_objectness": 0.3, ...}   # validation losses: engine/validation.py

``iteration`` counts optimizer steps taken (1 after the first step). Train records are written every
``log_every`` iterations (and at the last one); their losses and ``time`` (seconds per iteration)
are means over the iterations since the previous record. TensorBoard scalars go to ``DIR/tb/``
under ``train/<name>`` and ``eval/<name>``, and the validation losses ``val_<loss name>`` of an
eval record under ``val/<loss name>`` (beside ``train/<loss name>``); at every evaluation the per-class
precision / recall curves go under ``pr_curve/<class>`` and the sample picture (``engine/report.py``)
under ``eval/samples``.

``DIR/log.txt`` (``console_log``) holds the run's console lines from the moment it is accepted (its start line),
as a reader of the terminal saw them: the progress bar's redraws and escape codes left out. The progress bar is drawn only on a terminal; when the output
is a file or a pipe, the train records are printed as plain lines instead.

``DIR/results.csv`` holds one row per evaluation (``results_rows``), rewritten at every evaluation; it is
written when the logger starts too (only a header in a new run; on resume, without the rows after the
resume iteration).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from fasterrcnn.errors import DataError
from fasterrcnn.io import atomic_write_text
from fasterrcnn.reading import METRICS_BYTES, JSONError, loads_json, read_text

__all__ = ["ConsoleLog", "MetricsLogger", "console_log", "json_safe", "pr_curve_arrays", "read_metrics", "results_csv", "results_rows"]

RESULTS_METRICS = ("mAP", "AP", "AP50", "AP75")  # the metric columns of results.csv, when an evaluation has them


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed run, is dropped).

    A line that is not a JSON object (the file edited by hand, or not UTF-8) is a DataError naming the file and line.
    """
    records = []
    try:
        lines = read_text(path, METRICS_BYTES, "metrics file").splitlines()
    except FileNotFoundError:
        return records
    except OSError as e:
        raise DataError(path, f"cannot read metrics file ({e.strerror or e})") from None
    for number, line in enumerate(lines, start=1):
        try:
            record = loads_json(line)
        except JSONError as e:
            if number == len(lines) and e.syntax:  # torn by a killed run
                continue
            raise DataError(path, f"line {number}: {e.problem}") from None
        if not isinstance(record, dict):
            raise DataError(path, f"line {number}: expected a JSON object (one record), got {type(record).__name__}")
        iteration = record.get("iteration", 0)
        if isinstance(iteration, bool) or not isinstance(iteration, int):
            raise DataError(path, f"line {number}: 'iteration' is {type(iteration).__name__}, expected a whole number")
        records.append(record)
    return records


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def results_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``eval`` record of ``records`` (metrics.jsonl's), in order: what results.csv holds.

    A row has ``iteration``; ``epoch`` and ``lr`` of the last train record at or before it (None when
    there is none); every training loss (``loss*``) as the mean of the train records since the previous
    evaluation, each weighted by the iterations it covers (its iteration minus the previous train
    record's); then the eval record's validation losses (``val_loss*``) and metrics (``RESULTS_METRICS``).
    A value missing from the records is missing from the row.
    """
    rows: list[dict[str, Any]] = []
    window: list[tuple[int, dict[str, Any]]] = []  # (iterations covered, train record) since the last evaluation
    last_train: dict[str, Any] | None = None
    for record in records:
        if record.get("type") == "train":
            window.append((record["iteration"] - (last_train["iteration"] if last_train else 0), record))
            last_train = record
        elif record.get("type") == "eval":
            row: dict[str, Any] = {
                "iteration": record["iteration"],
                "epoch": last_train.get("epoch") if last_train else None,
                "lr": last_train.get("lr") if last_train else None,
            }
            names = [k for _, r in window for k in r if k.startswith("loss")]
            for name in dict.fromkeys(names):
                weighted = [(w, r[name]) for w, r in window if _number(r.get(name))]
                total = sum(w for w, _ in weighted)
                if total > 0:
                    row[name] = sum(w * v for w, v in weighted) / total
            row.update({k: v for k, v in record.items() if k.startswith("val_loss") and _number(v)})
            row.update({k: record[k] for k in RESULTS_METRICS if _number(record.get(k))})
            rows.append(row)
            window = []
    return rows


def _column_group(name: str) -> int:
    if name in ("iteration", "epoch", "lr"):
        return 0
    return 1 if name.startswith("loss") else 2 if name.startswith("val_loss") else 3


def results_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text, floats to 6 significant digits, a missing value empty. The columns are grouped as
    ``results_rows`` makes a row (iteration, epoch, lr; training losses; validation losses; metrics), in order
    of first appearance within a group, so a first row without training losses shifts no column."""
    columns = sorted(dict.fromkeys(k for row in rows for k in row), key=_column_group) or ["iteration"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in columns])
    return buffer.getvalue()


def pr_curve_arrays(recall, precision, instances: int, points: int = 101) -> dict[str, Any]:
    """A precision / recall curve (recall increasing, as the evaluators return it) as the keyword arguments
    of TensorBoard's ``add_pr_curve_raw``: at most ``points`` points, lowest threshold (highest recall) first.

    TensorBoard wants counts too; they are derived from recall x ``instances`` (true positives, false
    negatives) and precision (false positives); a detector has no true negatives (0).
    """
    import numpy as np

    recall = np.asarray(recall, dtype=np.float64)[::-1]
    precision = np.asarray(precision, dtype=np.float64)[::-1]
    if len(recall) > points:
        keep = np.unique(np.linspace(0, len(recall) - 1, points).round().astype(np.int64))
        recall, precision = recall[keep], precision[keep]
    tp = recall * instances
    fp = np.divide(tp * (1.0 - precision), precision, out=np.zeros_like(tp), where=precision > 0)
    return {
        "true_positive_counts": tp, "false_positive_counts": fp, "true_negative_counts": np.zeros_like(tp),
        "false_negative_counts": instances - tp, "precision": precision, "recall": recall, "num_thresholds": len(recall),
    }  # fmt: skip


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
        quiet: print one plain line per train record instead of a progress bar (also when stderr is not a
            terminal: a bar's redraws would fill a log file with escape codes).
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
        self.quiet = quiet = quiet or not sys.stderr.isatty()
        self.path = self.output_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= start_iteration] if start_iteration else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.records: list[dict[str, Any]] = kept
        self.results_path = self.output_dir / "results.csv"  # resume: the rows after start_iteration go, with their records
        atomic_write_text(self.results_path, results_csv(results_rows(kept)))
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
    def log_step(
        self, iteration: int, epoch: int, lr: float, losses: dict[str, float], seconds: float, *, record: bool = False
    ) -> None:
        """One optimizer step done (``iteration`` >= 1); ``losses`` includes the total ``loss``. A train record
        (the mean since the last one) is written every ``log_every`` iterations, at the end, and when ``record``
        (an evaluation follows: results.csv pairs its row with the training losses up to it)."""
        self._window.append((losses, seconds))
        self._run_seconds += seconds
        self._run_iters += 1
        if self._bar is not None:
            self._bar.set_description_str(f"epoch {epoch}", refresh=False)
            self._bar.set_postfix_str(f"loss {losses['loss']:.3f} lr {lr:.1e}", refresh=False)
            self._bar.terms = " ".join(f"{_BAR_NAMES.get(k, k)} {v:.3f}" for k, v in losses.items() if k != "loss")
            self._bar.update(iteration - self._bar.n)
        if iteration % self.log_every and iteration != self.max_iters and not record:
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
    def log_eval(self, iteration: int, metrics: dict[str, Any], report=None) -> None:
        """Evaluation results at ``iteration``: scalars, ``metric`` and ``per_class`` are recorded, results.csv
        rewritten; ``pr_curves`` and (with an ``engine.report.EvaluationReport``) the samples go to TensorBoard."""
        record = {"type": "eval", "iteration": iteration}
        for k, v in metrics.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                record[k] = v
            elif k == "per_class":
                record[k] = {name: float(ap) for name, ap in v.items()}
        self._write(record)
        atomic_write_text(self.results_path, results_csv(results_rows(self.records)))
        for k, v in record.items():
            if k not in ("type", "iteration") and isinstance(v, (int, float)):
                # validation losses beside train/<loss>: val_loss_classifier -> val/loss_classifier
                tag = f"val/{k[len('val_'):]}" if k.startswith("val_loss") else f"eval/{k}"
                self._writer.add_scalar(tag, v, iteration)
        for name, ap in record.get("per_class", {}).items():
            if ap is not None and math.isfinite(ap):
                self._writer.add_scalar(f"eval_per_class/{name}", ap, iteration)
        instances = {row["class"]: row["instances"] for row in report.rows} if report is not None else metrics.get("num_gt", {})
        for name, (recall, precision) in metrics.get("pr_curves", {}).items():
            if len(recall):
                self._writer.add_pr_curve_raw(f"pr_curve/{name}", **pr_curve_arrays(recall, precision, instances.get(name, 0)), global_step=iteration)
        if report is not None and report.samples is not None:
            import numpy as np

            self._writer.add_image("eval/samples", np.asarray(report.samples), iteration, dataformats="HWC")
        headline = ", ".join(
            f"{k} {record[k]:.4f}" for k in ("mAP", "AP", "AP50", "AP75", "val_loss") if isinstance(record.get(k), float)
        )
        where = f" on {record['split']}" if isinstance(record.get("split"), str) else ""
        self.info(f"evaluation at iteration {iteration}{where}: {headline}")

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


_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal control sequences (cursor moves, colours)


class ConsoleLog:
    """The lines of a run's console, appended to ``path`` (its ``log.txt``) once ``start`` is called: the lines
    before it are kept in memory, so a run refused before it starts (a bad setting, a missing file) leaves no
    file, and an earlier run's files deleted on the way (``--overwrite``) take none of this run's lines. The
    file is opened for each line (appended), so that nothing written goes to a deleted file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._held: list[str] | None = []  # None once started

    def write_line(self, line: str) -> None:
        if self._held is not None:
            self._held.append(line)
            return
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(line + "\n")

    def start(self) -> None:
        """From now on lines go to the file, the held ones first."""
        held, self._held = self._held or [], None
        if held:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write("".join(line + "\n" for line in held))


class _LoggedStream(io.TextIOBase):
    """A text stream that gives its complete lines to ``log`` (what is left after the last carriage return,
    escape codes removed, blank lines dropped) and passes everything to ``stream`` when ``echo``."""

    def __init__(self, stream: TextIO, log: ConsoleLog, echo: bool):
        self.stream, self.log, self.echo = stream, log, echo
        self._pending = ""

    def write(self, text: str) -> int:
        if self.echo:
            self.stream.write(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            line = _ESCAPE.sub("", line.rpartition("\r")[2]).rstrip()
            if line:
                self.log.write_line(line)
        self._pending = self._pending.rpartition("\r")[2]  # a redrawn bar: only its last state
        return len(text)

    def flush(self) -> None:
        if self.echo:
            self.stream.flush()

    def isatty(self) -> bool:
        return self.echo and self.stream.isatty()

    def fileno(self) -> int:
        if not self.echo:
            raise io.UnsupportedOperation("fileno")
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def console_log(path: str | Path, *, echo: bool = True) -> Iterator[ConsoleLog]:
    """While the block runs, every line written to ``sys.stdout`` / ``sys.stderr`` also goes to ``path`` (a run's
    ``log.txt``) once the yielded ``ConsoleLog`` is started; ``echo`` False: only there (``train(..., quiet=True)``
    prints nothing)."""
    stdout, stderr = sys.stdout, sys.stderr
    log = ConsoleLog(path)
    logged = _LoggedStream(stdout, log, echo), _LoggedStream(stderr, log, echo)
    sys.stdout, sys.stderr = logged
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        for stream in logged:  # a last line without its newline
            if line := _ESCAPE.sub("", stream._pending).rstrip():
                log.write_line(line)
