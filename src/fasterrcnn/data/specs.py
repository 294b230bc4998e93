"""What a training run learns from and validates on: ``TrainingData`` and ``ValidationData``, and their data sets.

    training = TrainingData("VOCdevkit/VOC2007", split="trainval")
    dataset = training.dataset(augment, classes=None, reduce_to=(600, 1000))
    val_dataset = ValidationData().dataset(training, dataset.classes, reduce_to=(600, 1000))  # VOC: its test split

A spec names the data and its options; the data set classes answer the format's questions (which split a run
validates on, whether a split exists: ``data.formats``), so the run layer (``runs.train``) decides none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fasterrcnn.errors import ConfigError

__all__ = ["TrainingData", "ValidationData"]


@dataclass(frozen=True)
class TrainingData:
    """A run's training set: ``path`` (a VOC root, COCO instances JSON or YOLO data.yaml; None: the data that a run's
    config.json records, see ``runs.train``), its ``split`` (VOC, YOLO; None: ``trainval``, which means ``train`` for
    a data.yaml without a trainval entry, or the recorded split), the COCO ``images`` folder, the VOC ``classes``
    (None: found), ``drop_empty`` (COCO, YOLO), ``on_bad_image``, and ``slice``: a tile size for sliced training
    (``data.transforms.RandomTile``; None: whole images)."""

    path: str | Path | None = None
    split: str | None = None
    images: str | Path | None = None
    classes: list[str] | None = None
    drop_empty: bool = False
    on_bad_image: str = "skip"
    slice: int | None = None

    def __post_init__(self):
        if self.slice is not None and (isinstance(self.slice, bool) or not isinstance(self.slice, int) or self.slice < 32):
            raise ConfigError(f"slice must be a tile size of at least 32 pixels, got {self.slice!r}")

    def dataset(self, augment=None, classes: list[str] | None = None, reduce_to: tuple[int, int] | None = None):
        """The data set: ``augment`` (``data.transforms.training_transforms``) on every sample, after a random
        ``slice`` x ``slice`` tile of the image decoded whole when slicing; ``classes`` when the spec names none
        (a resumed run's); ``reduce_to``: the model's (min_size, max_size), for decoding huge images reduced."""
        from fasterrcnn.data.formats import build_dataset
        from fasterrcnn.data.transforms import Compose, RandomTile

        transforms = augment
        if self.slice is not None:  # full resolution, one random tile per sample
            transforms, reduce_to = Compose([RandomTile(self.slice), *([augment] if augment is not None else [])]), None
        return build_dataset(
            self.path, split=self.split or "trainval", images_dir=self.images, classes=self.classes or classes,
            transforms=transforms, on_bad_image=self.on_bad_image, drop_empty=self.drop_empty, reduce_to=reduce_to,
        )  # fmt: skip


@dataclass(frozen=True)
class ValidationData:
    """A run's validation set: ``path`` (None: the ``split`` of the training data, when it has one, or the
    validation set a run's config.json records), ``split`` (None: the format's evaluation split), the COCO
    ``images`` folder, the ``metric`` (None: the data's). ``runs.train(..., val=False)`` validates on nothing."""

    path: str | Path | None = None
    split: str | None = None
    images: str | Path | None = None
    metric: str | None = None

    def dataset(self, training: TrainingData, classes: list[str], reduce_to: tuple[int, int] | None = None):
        """The validation data set with the training set's ``classes``, or None: ``path`` (its ``split``, default
        its format's evaluation split), else the evaluation split of ``training``'s data when it has one other
        than the training split (VOC: test, YOLO: val; ``data.formats``)."""
        from fasterrcnn.data.formats import build_dataset, dataset_class, evaluation_split

        options = dict(classes=classes, on_bad_image=training.on_bad_image, reduce_to=reduce_to)
        if self.path is not None:
            split = evaluation_split(self.path, self.split) or "test"
            return build_dataset(self.path, split=split, images_dir=self.images, **options)
        split = evaluation_split(training.path, self.split)
        if split is not None and split != training.split and dataset_class(training.path).has_split(training.path, split):
            return build_dataset(training.path, split=split, **options)
        return None
