"""A trained detector in one line: ``Detector.from_checkpoint("best.pt").detect("photo.jpg")``.

    detector = Detector.from_checkpoint("runs/x/checkpoints/best.pt")   # cuda when available
    for d in detector.detect("photo.jpg", score_threshold=0.8):
        print(d.class_name, d.score, d.box)                            # box: (x1, y1, x2, y2) pixels
    detector.draw("photo.jpg", detections).save("photo_boxes.jpg")

``detect`` takes an image as

- a path (``str`` / ``pathlib.Path``): decoded by ``fasterrcnn.data.load_image`` (EXIF orientation
  applied, grayscale / 16-bit / alpha normalised; ``DataError`` for a bad file);
- a binary file object (``open(path, "rb")``, ``io.BytesIO`` of downloaded or uploaded bytes):
  decoded as a path (Pillow reads it from its start); its position is left as it was;
- a ``PIL.Image``: converted with ``convert("RGB")`` (used as given: no EXIF rotation);
- a NumPy array ``[H, W, 3]`` uint8, RGB;
- a float ``Tensor[3, H, W]``, RGB in [0, 1] (any device);

or a list of those (one batched forward pass; returns one list of detections per image).
Every form becomes the same float32 tensor (uint8 / 255), so the same pixels give the same
detections whatever the form -- except that a path or file of an image at least twice as large as the
model's input (``data.images.reduction_factor``) is decoded at 1/2, 1/4 ... of its size, before
any float copy: a 8000x6000 photo then costs memory like a 1000x750 one. Its boxes are still
in the original image's pixels.

Boxes are float ``(x1, y1, x2, y2)`` in pixels of the image as given (continuous coordinates);
labels are 1..C with ``class_names[label - 1]`` their names. The model's own
``box_score_thresh`` (a ModelConfig field, 0.05 by default) already drops lower scores, so a
``score_threshold`` below it returns nothing more (except from a checkpoint of ``fasterrcnn calibrate``,
whose score map applies after that threshold and can give lower scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from fasterrcnn.data.images import ImageInput, in_original_pixels, is_file_object, position_kept, to_image_tensor
from fasterrcnn.device import AMP_DTYPES, autocast_context, keep_freed_memory, resolve_device, resolve_precision
from fasterrcnn.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fasterrcnn.engine.checkpoint import Checkpoint

__all__ = ["Detection", "Detector"]


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` ``(x1, y1, x2, y2)`` in original-image pixels, ``label`` in
    1..C, ``class_name`` its name, ``score`` in [0, 1]; ``probabilities`` (``detect(probabilities=True)``): the
    box head's softmax over all C+1 classes of its RoI, background at 0, ``probabilities[label] == score`` unless
    the checkpoint has a score map (``fasterrcnn calibrate``: the map changes the score, not the row)."""

    box: tuple[float, float, float, float]
    label: int
    class_name: str
    score: float
    probabilities: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"box": [x1, y1, x2, y2], "label", "class_name", "score"}`` (and ``"probabilities"`` when kept; JSON-ready)."""
        found = {"box": list(self.box), "label": self.label, "class_name": self.class_name, "score": self.score}
        return found if self.probabilities is None else {**found, "probabilities": list(self.probabilities)}


class Detector:
    """A FasterRCNN in eval mode with its class names: ``detect`` images, ``draw`` detections.

    Args:
        model: a ``FasterRCNN`` (moved to ``device`` and put in eval mode).
        class_names: the C foreground class names, ``class_names[label - 1]`` for label 1..C.
        device: ``None`` / ``"auto"`` (CUDA when available), or e.g. ``"cpu"``, ``"cuda:1"``.
        label_to_category_id: optional {label: dataset category id} (COCO checkpoints), kept for callers.
        precision: ``"auto"`` (bf16 where the device has bf16 instructions, else f32: ``device.resolve_precision``),
            ``"f32"``, ``"bf16"`` / ``"fp16"`` (fp16: CUDA only): the forward pass under ``torch.autocast`` in that
            dtype, boxes and scores still float32; the detections differ slightly from float32 ones. An exported
            model (``from_checkpoint("model.xml")``) chose its precision when it was loaded (``"int8"`` for a
            file written by ``fasterrcnn export --int8``). ``self.precision`` is the one chosen.
        prepack: in float32 on the CPU, lay the model out for oneDNN, in place (the same parameters and
            state_dict keys), equal up to float rounding: its ``nn.Linear`` layers become
            ``modeling.prepack.PackedLinear``, which multiply by their weights packed once, not on every call
            (about 27-30 % less box-head time), and the backbone runs channels-last
            (``FasterRCNN.channels_last_backbone``; docs/deployment.md). False keeps the model as it is; other
            precisions and devices never prepack. On the CPU the process also keeps freed memory for reuse
            (``device.keep_freed_memory``), whatever the precision.
        freeze_backbone: in float32 on the CPU, also run the backbone (with its FPN) frozen for oneDNN, one
            TorchScript module per padded input size, traced when that size first comes, the last 4 sizes kept
            (``modeling.prepack.FrozenBackbone``): 13-18 % less backbone time, but each new size first costs
            seconds (mobilenet_v3_large_fpn) to a minute or more (resnet50_fpn), so it is off by default; worth
            it for many images of few sizes (the transform pads to a multiple of 32: same-size photos are one size).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: Sequence[str],
        *,
        device: str | torch.device | None = None,
        label_to_category_id: dict[int, int] | None = None,
        precision: str = "auto",
        prepack: bool = True,
        freeze_backbone: bool = False,
    ):
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"the model has {num_classes} classes but {len(class_names)} class names were given")
        self.device = resolve_device(device)
        if hasattr(model, "precision"):  # an exported model: its runtime's precision
            self.precision = model.precision
        elif precision == "int8":
            raise ConfigError("precision int8 runs an OpenVINO file written by 'fasterrcnn export --int8' (pass that .xml as the weights)")
        else:
            self.precision = resolve_precision(precision, self.device)
        self.amp_dtype = AMP_DTYPES.get(self.precision)  # None: float32 (or the exported model's own)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu" and not hasattr(model, "precision"):  # eager PyTorch on the CPU
            keep_freed_memory()
            if self.precision == "f32":
                from fasterrcnn.modeling.prepack import FrozenBackbone, prepack_linear

                if prepack:
                    prepack_linear(self.model)
                    if hasattr(self.model, "channels_last_backbone"):
                        self.model.channels_last_backbone()
                if freeze_backbone and hasattr(self.model, "frozen_backbone"):
                    self.model.frozen_backbone = FrozenBackbone(self.model.backbone)
        self.class_names = tuple(str(name) for name in class_names)
        self.label_to_category_id = label_to_category_id

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: "str | Path | Checkpoint",
        device: str | torch.device | None = None,
        precision: str = "auto",
        *,
        fuse: bool = True,
        prepack: bool = True,
        freeze_backbone: bool = False,
    ) -> "Detector":
        """The detector of a checkpoint written by ``fasterrcnn train`` (or ``compress``): a path, or a
        ``Checkpoint`` already read (``engine.checkpoint.Checkpoint.read``); or of a file written by
        ``fasterrcnn export`` (``.onnx``: onnxruntime, float32; ``.xml``: OpenVINO in f32 or bf16, or int8; CPU).

        ``fuse``: fold the BatchNorm into the convolutions (``modeling.fuse``; faster, equal up to float
        rounding); False keeps the checkpoint's ``state_dict`` layout (for callers that save the model).
        ``prepack``, ``freeze_backbone``: as in ``Detector`` (float32 on the CPU; the ``state_dict`` is unchanged either way).
        Raises DataError naming the file when it is missing, unsafe, not a checkpoint, or its
        weights do not fit its configuration.
        """
        from fasterrcnn.deploy.runtime import EXPORTED_SUFFIXES, load_exported
        from fasterrcnn.engine.checkpoint import Checkpoint

        if not isinstance(checkpoint, Checkpoint) and Path(checkpoint).suffix in EXPORTED_SUFFIXES:
            model = load_exported(checkpoint, precision=precision)
            return cls(model, model.class_names, device=device)
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint.read(checkpoint)
        model = checkpoint.build_model()
        if fuse:
            from fasterrcnn.modeling.fuse import fuse_batchnorm

            model = fuse_batchnorm(model.eval())
        return cls(model, checkpoint.class_names, device=device, label_to_category_id=checkpoint.label_to_category_id, precision=precision, prepack=prepack, freeze_backbone=freeze_backbone)

    @classmethod
    def from_torchvision(
        cls,
        preset: str,
        weights_path: str | Path,
        classes: Sequence[str] | str = "coco",
        device: str | torch.device | None = None,
        precision: str = "auto",
        download: bool | None = None,
    ) -> "Detector":
        """A torchvision detection weights file (e.g. ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``) in ``preset``'s model.

        ``weights_path`` may also name a registered COCO detector (``fasterrcnn.pretrained.PRETRAINED``,
        e.g. "fasterrcnn_resnet50_fpn_coco"), read from the cache and downloaded only when ``download``
        allows it (None: when ``FASTERRCNN_DOWNLOAD=1``).
        The number of classes is read from the file (``roi_heads.box_predictor.cls_score``).
        ``classes``: the foreground class names in label order, or ``"coco"`` for the COCO
        names in torchvision's 91-id layout (needs ``fasterrcnn.data.coco_names``).
        """
        from fasterrcnn.modeling.backbones.weights import load_state_dict_strictly, read_state_dict
        from fasterrcnn.modeling.faster_rcnn import FasterRCNN
        from fasterrcnn.pretrained import COCO_DETECTOR, resolve_weights

        weights_path = resolve_weights(weights_path, download=download, kind=COCO_DETECTOR, fits=preset)
        state = read_state_dict(weights_path)
        cls_score = state.get("roi_heads.box_predictor.cls_score.weight")
        if cls_score is None or cls_score.ndim != 2:
            raise DataError(weights_path, "not a detection weights file (no roi_heads.box_predictor.cls_score.weight)")
        num_classes = cls_score.shape[0] - 1
        if isinstance(classes, str):
            classes = _named_classes(classes, num_classes)
        if len(classes) != num_classes:
            raise ConfigError(f"{weights_path}: the file has {num_classes} foreground classes but {len(classes)} class names were given")
        model = FasterRCNN.from_preset(preset, num_classes=num_classes)
        load_state_dict_strictly(model, state, weights_path, f"preset {preset!r}")
        return cls(model, classes, device=device, precision=precision)

    # -- inference -----------------------------------------------------------------------------------------
    def detect(
        self,
        image: ImageInput | Sequence[ImageInput],
        score_threshold: float = 0.5,
        *,
        probabilities: bool = False,
        slice: int | None = None,
        overlap: float = 0.2,
        full_image: bool = True,
        tta: bool = False,
    ) -> list[Detection] | list[list[Detection]]:
        """Detections scoring >= ``score_threshold`` by decreasing score; a list of lists for a list of images.

        ``probabilities``: each detection also carries its class probabilities (``Detection.probabilities``).
        ``slice=SIZE``: sliced inference, tiles of SIZE pixels overlapping by ``overlap``, plus one pass over
        the whole image unless ``full_image=False``; the image is read at full resolution (a path up to 150
        megapixels) as uint8. ``tta``: test-time augmentation (flip, scales). See ``fasterrcnn.inference``.
        Probabilities go with plain inference only (sliced and augmented passes merge boxes of several passes).
        """
        if not (isinstance(score_threshold, (int, float)) and 0.0 <= score_threshold <= 1.0):
            raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
        batch = isinstance(image, (list, tuple))
        images = list(image) if batch else [image]
        if not images:
            return []
        from fasterrcnn.inference import InferenceOptions, check_probabilities

        options = InferenceOptions(slice=slice, overlap=overlap, full_image=full_image, tta=tta)
        check_probabilities(probabilities, options)
        if not options.plain:  # one image at a time, its tiles batched
            results = [self.as_detections(self.detect_tensors(img, options, score_threshold)) for img in images]
            return results if batch else results[0]
        dtype = next(self.model.parameters(), torch.empty(0)).dtype  # float32 for an exported model (no parameters)
        loaded = [self.load(img) for img in images]
        tensors = [tensor.to(self.device, dtype) for tensor, _ in loaded]
        with torch.inference_mode(), self.autocast(), self.keeping_probabilities(probabilities):
            outputs = self.model(tensors)
        for output, (tensor, size) in zip(outputs, loaded):
            output["boxes"] = in_original_pixels(output["boxes"], tensor, size)
        results = [self.as_detections(out, score_threshold) for out in outputs]
        return results if batch else results[0]

    def __call__(self, image: ImageInput | Sequence[ImageInput], score_threshold: float = 0.5, **options) -> list[Detection] | list[list[Detection]]:
        """``detector(image)`` is ``detector.detect(image)``: one image or a list, the same arguments and answer,
        so that a Detector can be called like a model."""
        return self.detect(image, score_threshold=score_threshold, **options)

    def keeping_probabilities(self, enabled: bool = True):
        """The context in which the model's outputs also carry ``"probabilities"`` [D, C+1] (when ``enabled``)."""
        heads = getattr(self.model, "roi_heads", None)
        if heads is None and enabled:
            raise ConfigError("class probabilities need a checkpoint's model; an exported model returns scores only")
        return heads.keeping_probabilities(enabled) if heads is not None else nullcontext()

    def detect_tensors(self, image: ImageInput, options, score_threshold: float = 0.0) -> dict[str, torch.Tensor]:
        """The model's ``{"boxes", "labels", "scores"}`` scoring >= ``score_threshold`` (CPU, original pixels) on
        one image under ``options`` (``inference.InferenceOptions``: sliced images read whole as uint8, others as
        ``load`` reads them)."""
        from fasterrcnn.inference import detect_image, load_uint8

        tensor, size = (load_uint8(image), None) if options.slice is not None else self.load(image)
        found = detect_image(self.model, tensor, options, device=self.device, amp_dtype=self.amp_dtype, score_threshold=score_threshold)
        return {**found, "boxes": in_original_pixels(found["boxes"], tensor, size)}

    def autocast(self) -> torch.autocast:
        """The context the model runs in: ``torch.autocast`` in the bf16 / fp16 ``precision``, a no-op for f32."""
        return autocast_context(self.device, self.amp_dtype)

    def load(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """``(tensor, original (h, w) or None)`` of one image as ``detect`` reads it: a path or file is
        decoded reduced when it is large (see the module docstring); other forms are used as given (None).
        ``in_original_pixels`` maps the model's boxes on ``tensor`` back to the original image."""
        if not isinstance(image, (str, Path)) and not is_file_object(image):
            return to_image_tensor(image), None
        from fasterrcnn.data.images import image_size, load_image, reduction_factor

        with position_kept(image):
            size = image_size(image)
            transform = getattr(self.model, "transform", None)
            reduce = 1 if transform is None else reduction_factor(size, transform.min_size, transform.max_size)
            return load_image(image, reduce=reduce), size

    def as_detections(self, output: dict[str, torch.Tensor], score_threshold: float = 0.0) -> list[Detection]:
        """The model's output for one image (``{"boxes", "labels", "scores"}``, optionally ``"probabilities"``) as
        ``Detection``s scoring >= ``score_threshold``."""
        keep = output["scores"] >= score_threshold
        boxes = output["boxes"][keep].cpu().tolist()
        labels = output["labels"][keep].cpu().tolist()
        scores = output["scores"][keep].cpu().tolist()
        rows = [tuple(p) for p in output["probabilities"][keep].cpu().tolist()] if "probabilities" in output else [None] * len(scores)
        return [
            Detection(tuple(box), label, self.class_names[label - 1], score, row)
            for box, label, score, row in zip(boxes, labels, scores, rows)
        ]

    def draw(self, image: ImageInput, detections: Sequence[Detection]) -> Image.Image:
        """A new RGB PIL image: ``image`` with each detection's box, class name and score (visualize.draw_detections)."""
        from fasterrcnn.visualize import draw_detections

        tensor = to_image_tensor(image).detach().cpu()
        return draw_detections(
            tensor,
            [d.box for d in detections],
            [d.label for d in detections],
            [d.score for d in detections],
            self.class_names,
        )

    def __repr__(self) -> str:
        preset = getattr(getattr(self.model, "config", None), "backbone", type(self.model).__name__)
        return f"Detector({preset}, {len(self.class_names)} classes, device={self.device}, precision={self.precision})"


def _named_classes(name: str, num_classes: int) -> list[str]:
    """The class names of a named label layout (``"coco"``: torchvision's 91-id COCO layout)."""
    if name != "coco":
        raise ConfigError(f"unknown class list {name!r}; pass 'coco' or a list of class names")
    try:
        from fasterrcnn.data.coco_names import coco_class_names
    except ImportError:
        raise ConfigError("the COCO class names are not available in this version; pass classes=[...] explicitly") from None
    return list(coco_class_names(num_classes))
