"""Run a detector over a dataset and score its detections (VOC AP or COCO AP).

Used by the trainer's periodic evaluation and by ``fasterrcnn eval``. Detections become a results
list (COCO results format, ``evaluation/results.py``): VOC image ids are file stems and category ids
the 1-based labels; COCO image and category ids are the JSON's.

Metrics:
- ``"voc"``: VOC AP at IoU 0.5, area under the precision envelope (VOC2010+); ``"voc07"``: the
  VOC2007 11-point AP. Difficult objects (VOC) and crowd regions (COCO) are ignored.
- ``"coco"``: COCO AP@[.5:.95] through pycocotools. On VOC data a COCO ground truth is built
  in memory from the annotations (difficult objects become ``iscrowd`` regions, which COCOeval ignores).

Data parallel (a process group initialised by ``engine.distributed.init_distributed``): the batches
of ``batch_size`` images are dealt round-robin to the processes, each runs the model on its own,
the detections are gathered on rank 0 in the dataset's order, and rank 0 scores them; every process
gets the metrics. The batches, hence the detections and the metrics, are those of one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fasterrcnn.data.protocol import DetectionDataset
from fasterrcnn.errors import ConfigError

if TYPE_CHECKING:
    from fasterrcnn.inference import InferenceOptions

__all__ = [
    "METRICS",
    "default_metric",
    "evaluate_model",
    "evaluate_results",
    "headline",
    "run_inference",
]

METRICS = ("voc", "voc07", "coco")


def default_metric(dataset: DetectionDataset) -> str:
    """The metric ``dataset``'s annotations are scored with by default (``"voc"`` or ``"coco"``)."""
    return dataset.default_metric


def headline(metrics: Mapping[str, Any]) -> tuple[str, float]:
    """The single number a run is judged by: ``("mAP", value)`` for VOC metrics, ``("AP", value)`` for COCO."""
    key = "mAP" if "mAP" in metrics else "AP"
    return key, float(metrics[key])


@torch.inference_mode()
def run_inference(
    model: torch.nn.Module,
    dataset,
    *,
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    shard: bool = True,
    amp_dtype: torch.dtype | None = None,
    inference: InferenceOptions | None = None,
) -> list[dict]:
    """Detections of ``model`` on every image of ``dataset`` (no augmentation), as a results list.

    Boxes are in the pixels of the image files: a sample decoded reduced (smaller than its target's
    ``orig_size``, see ``VOCDataset``'s ``reduce_to``) has its detections scaled back.

    The model is put in eval mode for the run and its previous mode is restored afterwards; with
    ``amp_dtype`` (``device.autocast_dtype``) it runs under ``torch.autocast`` in that dtype. ``inference``
    (``inference.InferenceOptions``, sliced and / or TTA) detects each image with ``inference.detect_image``.
    In a data-parallel run (``shard``, a process group initialised) every process runs its share of
    the batches; rank 0 returns the whole list, in the order of one process, the others ``[]``.
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from fasterrcnn.data.loader import collate, ignore_interrupts
    from fasterrcnn.data.transforms import resize_boxes
    from fasterrcnn.device import autocast_context
    from fasterrcnn.engine import distributed
    from fasterrcnn.evaluation import detections_to_results
    from fasterrcnn.inference import detect_image

    world_size = distributed.get_world_size() if shard else 1
    indices = list(range(len(dataset)))
    if world_size > 1:  # batch k goes to rank k % world_size
        batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        indices = [i for batch in batches[distributed.get_rank() :: world_size] for i in batch]
        dataset = Subset(dataset, indices)
        progress = progress and distributed.is_main_process()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate,
        worker_init_fn=ignore_interrupts if num_workers > 0 else None,  # Ctrl-C is the trainer's to handle
    )  # fmt: skip
    was_training = model.training
    model.eval()
    per_image: list[list[dict]] = []  # results of every image, in loader order
    autocast = autocast_context(torch.device(device), amp_dtype)
    try:
        for images, targets in tqdm(loader, desc="evaluating", unit="batch", disable=not progress or None, leave=False):  # None: only on a terminal
            if inference is not None and not inference.plain:  # one image at a time, its tiles batched
                detections = [detect_image(model, image, inference, device=device, amp_dtype=amp_dtype) for image in images]
            else:
                with autocast:
                    detections = model([image.to(device) for image in images])
            for image, target, detection in zip(images, targets, detections):
                if "orig_size" in target:  # an image decoded reduced: its boxes back in the file's pixels
                    boxes = resize_boxes(detection["boxes"], image.shape[-2:], target["orig_size"])
                    detection = {**detection, "boxes": boxes}
                per_image.append(detections_to_results(target["image_id"], detection, class_names, label_to_category_id))
    finally:
        model.train(was_training)
    if world_size > 1:
        gathered = distributed.gather_object((indices, per_image))
        if gathered is None:
            return []
        by_index = {index: results for shard_indices, shard_results in gathered for index, results in zip(shard_indices, shard_results)}
        per_image = [by_index[index] for index in sorted(by_index)]
    return [result for results in per_image for result in results]


def evaluate_results(results: Sequence[Mapping[str, Any]], dataset, *, metric: str) -> dict[str, Any]:
    """Score a results list against ``dataset``'s annotations (``dataset.ground_truth()``, ``.classes``).

    Returns the evaluator's dict: ``evaluate_voc``'s (``mAP``, ``metric``, ``per_class``, ``pr_curves``, ...)
    or ``evaluate_coco``'s (``AP``, ``AP50``, ``AP75``, ..., ``per_class``, ``pr_curves``) plus
    ``metric: "coco"``. Raises ValueError when the results do not fit the dataset (unknown image or
    category ids): callers turn it into a DataError naming the results' source.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if metric == "coco":
        from fasterrcnn.evaluation import evaluate_coco

        if dataset.coco is not None:
            metrics = evaluate_coco(dataset.coco, list(results))
        else:
            coco_gt, coco_image_ids = _coco_ground_truth(dataset.ground_truth(), dataset.classes)
            unknown = sorted({r["image_id"] for r in results} - coco_image_ids.keys(), key=repr)
            if unknown:
                raise ValueError(f"{len(unknown)} result image id(s) are not in the data set, e.g. {unknown[:5]!r}")
            metrics = evaluate_coco(coco_gt, [dict(r, image_id=coco_image_ids[r["image_id"]]) for r in results])
        return {**metrics, "metric": "coco"}

    from fasterrcnn.evaluation import evaluate_voc

    if dataset.label_to_category_id is not None:  # e.g. COCO data: category ids -> labels 1..C
        cat_id_to_label = {cat_id: label for label, cat_id in dataset.label_to_category_id.items()}
        unknown = sorted({r["category_id"] for r in results} - cat_id_to_label.keys())
        if unknown:
            raise ValueError(f"category id(s) {unknown[:5]} are not categories of the data set")
        results = [dict(r, category_id=cat_id_to_label[r["category_id"]]) for r in results]
    ground_truth = dataset.ground_truth()
    known = {entry["image_id"] for entry in ground_truth}
    unknown = sorted({r["image_id"] for r in results} - known, key=repr)
    if unknown:
        raise ValueError(f"{len(unknown)} result image id(s) are not in the data set, e.g. {unknown[:5]!r}")
    return evaluate_voc(list(results), ground_truth, dataset.classes, use_07_metric=metric == "voc07")


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    *,
    metric: str,
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    shard: bool = True,
    amp_dtype: torch.dtype | None = None,
    inference: InferenceOptions | None = None,
) -> tuple[list[dict], dict[str, Any]]:
    """``run_inference`` then ``evaluate_results``: returns ``(results, metrics)``.

    Data parallel (``shard``, a process group initialised): rank 0 scores the gathered results and
    every process returns its metrics; the results are the whole list on rank 0, ``[]`` elsewhere.
    """
    from fasterrcnn.engine import distributed

    results = run_inference(
        model,
        dataset,
        class_names=class_names,
        label_to_category_id=label_to_category_id,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
        shard=shard,
        amp_dtype=amp_dtype,
        inference=inference,
    )
    if not (shard and distributed.is_distributed()):
        return results, evaluate_results(results, dataset, metric=metric)
    outcome: dict[str, Any] | Exception | None = None
    if distributed.is_main_process():
        try:
            outcome = evaluate_results(results, dataset, metric=metric)
        except Exception as e:  # raised on every process, not only on rank 0 (the others would wait forever)
            outcome = e
    outcome = distributed.broadcast_object(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return results, outcome


def _coco_ground_truth(ground_truth: Sequence[Mapping[str, Any]], class_names: Sequence[str]):
    """A pycocotools COCO built from VOC-style ground truth, and {image id: int COCO image id}.

    Category ids are the labels 1..C; difficult boxes are ``iscrowd`` (ignored by COCOeval).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO

    image_ids = {entry["image_id"]: index for index, entry in enumerate(ground_truth, start=1)}
    images, annotations = [], []
    for entry in ground_truth:
        coco_id = image_ids[entry["image_id"]]
        images.append({"id": coco_id, "file_name": str(entry["image_id"])})
        difficult = entry.get("difficult")
        for k, (box, label) in enumerate(zip(entry["boxes"].tolist(), entry["labels"].tolist())):
            x1, y1, x2, y2 = box
            crowd = bool(difficult[k]) if difficult is not None else False
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": coco_id,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd),
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": label, "name": name} for label, name in enumerate(class_names, start=1)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, image_ids
