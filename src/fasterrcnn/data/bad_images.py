"""The ``on_bad_image`` policy: what happens to an image whose file or annotation is bad.

- ``"error"``: the first bad image raises its ``DataError`` (one line naming the file and the problem).
- ``"skip"``: the image is left out with one warning line naming the file and the problem
  (``fasterrcnn: warning: <file>: <problem>; image skipped``) on the ``"fasterrcnn"`` logger, and a
  summary line with the count ends the loading. The dataset's ``skipped`` list holds
  ``(file, problem)`` for every image left out.

The command line's default is ``skip`` (``--on-bad-image``); the dataset classes' default is
``error``, so that library code never loses data silently.

Where the policy applies:

1. At dataset construction (``VOCDataset``, ``COCODataset``), for every problem that concerns one
   image: its annotation file is missing or malformed (``<object>`` without ``<bndbox>``,
   coordinates that are not finite numbers, a COCO ``bbox`` that is not 4 finite numbers, an
   ``iscrowd`` other than 0 / 1, a size that is not a whole number of pixels ...), its image file is missing,
   empty, not an image, truncated or of another size than annotated (``images.check_image``:
   header and end marker, no decoding), or its id is listed twice. The data set is then known
   before training starts, and training and evaluation see the same images.
2. While loading samples for training (``data.loader.build_loader``), for damage that only
   decoding reveals (a valid header and end marker, broken data in between). Under ``skip`` the
   sample is replaced by that of the next index (cyclically) whose image decodes, with the same
   per-sample seed. The replacement is a function of the index and the files only (not of time,
   worker process or earlier batches), so the batches are those of any other run over the same
   files, and resuming mid-epoch stays exact. Evaluation never replaces samples (that would score
   one image twice): there such an image is an error under both policies.

Problems of the whole data set (no root or split file, a split file listing no image, a JSON that
does not parse or is not a COCO instances file, an unknown class or category, duplicate category
ids or names, duplicate or non-integer annotation ids) are errors under both policies; so is a
data set whose every image is bad.
"""

from __future__ import annotations

import logging

from fasterrcnn.errors import ConfigError, DataError

__all__ = ["BadImages", "ON_BAD_IMAGE", "check_policy"]

ON_BAD_IMAGE = ("skip", "error")

logger = logging.getLogger("fasterrcnn")


def check_policy(policy: str) -> str:
    """``policy`` if it is one of ``ON_BAD_IMAGE``, else ConfigError."""
    if policy not in ON_BAD_IMAGE:
        raise ConfigError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {policy!r}")
    return policy


class BadImages:
    """Applies the policy while one dataset is built: ``bad(error)`` raises it or records and warns."""

    def __init__(self, policy: str):
        self.policy = check_policy(policy)
        self.skipped: list[tuple[str, str]] = []  # (file, problem), one per image left out

    def __call__(self, error: DataError) -> None:
        if self.policy == "error":
            raise error
        self.skipped.append((error.path, error.problem))
        logger.warning("%s; image skipped", error)

    def finish(self, what: str, total: int, where) -> None:
        """After the last image: an error when all ``total`` images were bad, else the summary warning."""
        if not self.skipped:
            return
        if len(self.skipped) >= total:
            path, problem = self.skipped[0]
            raise DataError(where, f"none of its {total} images can be used (the first: {path}: {problem})")
        logger.warning(
            "%s: %d of %d images skipped (bad files or annotations, listed above; --on-bad-image error stops at the first)",
            what, len(self.skipped), total,
        )  # fmt: skip
