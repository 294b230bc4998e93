"""Run by ``torchrun --nproc_per_node=2`` in tests/test_engine_distributed.py (CPU, gloo); not a test module.

    distributed_worker.py OUT_DIR CHECKPOINT VOC_ROOT [TRAIN_ARGS ...]

Every rank writes ``OUT_DIR/rank<r>.json`` with:
- ``eval``: the sharded ``evaluate_model`` (batch size 2) of the checkpoint on the VOC test split:
  the results list (complete on rank 0, empty elsewhere) and the mAP every rank received;
- ``nonfinite``: a data-parallel ``Trainer`` run of a small model whose loss is NaN on rank 1 only, at
  its second iteration: the skip records of rank 0's metrics.jsonl and this rank's final parameters.
Then, with TRAIN_ARGS, every rank runs ``fasterrcnn.cli.main(TRAIN_ARGS)`` (e.g. a ``--resume``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from fasterrcnn.cli import main as cli_main
from fasterrcnn.config import ModelConfig, TrainConfig
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.detector import Detector
from fasterrcnn.engine import distributed
from fasterrcnn.engine.evaluator import evaluate_model
from fasterrcnn.engine.logging import read_metrics
from fasterrcnn.engine.trainer import Trainer


class NaNOnRankOne(nn.Module):
    """A linear model of the mean pixel; its loss is NaN on rank 1 at the second call."""

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(backbone="tiny", num_classes=5)  # what checkpoints record
        self.linear = nn.Linear(3, 1)
        self.calls = 0

    def forward(self, images, targets=None):
        self.calls += 1
        x = torch.stack([image.mean(dim=(1, 2)) for image in images])  # [N, 3]
        loss = self.linear(x).pow(2).mean()
        if self.calls == 2 and distributed.get_rank() == 1:
            loss = loss * float("nan")
        return {"loss_box_reg": loss}


def main(out_dir: str, checkpoint: str, voc_root: str, *train_args: str) -> None:
    torch.set_num_threads(1)
    device = distributed.init_distributed("cpu")
    rank = distributed.get_rank()
    out = Path(out_dir)
    report: dict = {"rank": rank, "world_size": distributed.get_world_size(), "device": str(device)}

    # f32 as in the test process (whose fixture makes precision auto f32): the same float32 model, linear layers prepacked
    detector = Detector.from_checkpoint(checkpoint, device="cpu", precision="f32")
    test_set = VOCDataset(voc_root, split="test", classes=detector.class_names)
    results, metrics = evaluate_model(
        detector.model, test_set, metric="voc", class_names=list(detector.class_names), batch_size=2
    )
    report["eval"] = {"results": results, "mAP": metrics["mAP"], "per_class": metrics["per_class"]}

    train_set = VOCDataset(voc_root, split="train", classes=detector.class_names)
    torch.manual_seed(0)
    trainer = Trainer(
        NaNOnRankOne(),
        train_set,
        config=TrainConfig(batch_size=1, lr=0.1, warmup_iters=0, max_iters=4, log_every=1, checkpoint_every=100),
        output_dir=out / "nonfinite",
        preset="fake",
        class_names=train_set.classes,
        device=device,
        quiet=True,
    )
    trainer.train()
    records = read_metrics(out / "nonfinite" / "metrics.jsonl") if rank == 0 else []
    report["nonfinite"] = {
        "records": [(r["type"], r["iteration"]) for r in records],
        "params": [p.detach().flatten().tolist() for p in trainer.model.parameters()],
    }
    if train_args:
        report["train_exit_code"] = cli_main(list(train_args))  # leaves the process group
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    distributed.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:])
