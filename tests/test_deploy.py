"""Export to ONNX / OpenVINO: the same detections as the eager model, the runtime-backed Detector, BN folding."""

import io
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import torchvision_reference as reference
from fasterrcnn.config import PRESETS, get_preset, to_dict
from fasterrcnn.deploy.export import export_files, export_model, onnx_to_openvino
from fasterrcnn.deploy.metadata import read_metadata
from fasterrcnn.deploy.graph import DeployGraph, resized_size
from fasterrcnn.deploy.runtime import load_exported
from fasterrcnn.runs import export
from fasterrcnn.detector import Detector
from fasterrcnn.errors import DataError
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from fasterrcnn.modeling.fuse import fuse_batchnorm
from fasterrcnn.modeling.transform import resize_image

pytest.importorskip("onnxruntime")  # the 'deploy' extra (make test installs it)


def match_fraction(a, b, box_tol=0.5, score_tol=1e-3) -> float:
    """Fraction of the detections a = (boxes, labels, scores) with a twin in b: same label, every box
    coordinate within box_tol px, score within score_tol."""
    (ab, al, asc), (bb, bl, bsc) = [[np.asarray(x) for x in d] for d in (a, b)]
    if len(ab) == 0:
        return 1.0
    if len(bb) == 0:
        return 0.0
    ok = (al[:, None] == bl[None]) & (np.abs(ab[:, None] - bb[None]).max(-1) <= box_tol) & (np.abs(asc[:, None] - bsc[None]) <= score_tol)
    return float(ok.any(1).mean())


def test_match_fraction():
    a = ([[0, 0, 10, 10], [5, 5, 9, 9]], [1, 2], [0.9, 0.5])
    assert match_fraction(a, ([[0.4, 0, 10, 10]], [1], [0.9005])) == 0.5
    assert match_fraction(a, ([[0.6, 0, 10, 10]], [1], [0.9])) == 0.0


def test_resized_size_is_resize_image_size():
    # Exact integer-free arithmetic: the eager rule floor(H * s) in float64, for every size class.
    for h in range(40, 1500, 29):
        for w in (57, 640, 1999):
            expected = list(resize_image(torch.zeros(3, h, w), 800, 1333).shape[1:])
            assert resized_size(torch.tensor([h, w]), 800, 1333).tolist() == expected, (h, w)


# Smaller images and fewer proposals keep the large presets' cases to seconds; the architecture is the preset's.
_SMALL = dict(min_size=240, max_size=320, rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=100)
CASES = {
    # case (a preset, or a preset + "_compressed") -> ModelConfig overrides. The FPN presets run on the
    # seeded weights of the torchvision parity cases, the others on seeded random weights.
    "tiny": dict(box_score_thresh=0.0),
    "mobilenet_v3_large_320_fpn": dict(box_score_thresh=0.0),
    "mobilenet_v3_large_fpn": dict(box_score_thresh=0.0, min_size=480, max_size=640, rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300),
    "resnet50_fpn": dict(box_score_thresh=0.0, **_SMALL),
    "vgg16": dict(box_score_thresh=0.0, representation_size=256, **_SMALL),
    "resnet50_c4": dict(box_score_thresh=0.0, **_SMALL),
    "resnet101_c4": dict(box_score_thresh=0.0, min_size=160, max_size=224, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=30),
    "tiny_compressed": dict(box_score_thresh=0.0, box_head_ranks=(16, 16)),
}
IMAGES = [(200, 300), (333, 250)]


def test_every_preset_has_a_parity_case():
    assert {case.removesuffix("_compressed") for case in CASES} == set(PRESETS)


def _model(case: str) -> FasterRCNN:
    torch.manual_seed(0)
    preset = case.removesuffix("_compressed")
    model = FasterRCNN.from_preset(preset, **CASES[case]).eval()
    if preset.endswith("_fpn"):
        model.load_state_dict(reference.seeded_state_dict(f"fasterrcnn_{preset}"))
    if preset == "resnet101_c4":
        # With random weights the 33 residual blocks grow the features to ~1e5, and the RPN's boxes
        # collapse to zero width (no detections left): damping each block's residual branch (its last
        # BatchNorm's affine) keeps them near 10 and the detections spread over the classes.
        for name, module in model.named_modules():
            if name.endswith(".bn3"):
                module.weight.data *= 0.4
                module.bias.data *= 0.4
    return model


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    model = _model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    names = [f"class{i}" for i in range(model.num_classes)]
    export_model(model, folder / "model.onnx", names)
    onnx_to_openvino(folder / "model.onnx", folder / "model.xml")  # export_model's graph, traced once
    return request.param, model, folder


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=g) for h, w in IMAGES]


@pytest.fixture(scope="module")
def eager_detections(exported) -> list[tuple]:
    """The eager model's (boxes, labels, scores) on each of ``_images()``, computed once for both runtimes."""
    model = exported[1]
    with torch.no_grad():
        return [(d["boxes"], d["labels"], d["scores"]) for d in (model([image])[0] for image in _images())]


@pytest.mark.parametrize("runtime", ["model.onnx", "model.xml"])
def test_same_detections_as_eager(exported, eager_detections, runtime):
    case, _, folder = exported
    runtime_model = load_exported(folder / runtime)
    for image, eager in zip(_images(), eager_detections):
        got = runtime_model([image])[0]
        got = (got["boxes"], got["labels"], got["scores"])
        assert len(eager[0]) > 10, "too few detections to compare"
        assert match_fraction(eager, got) >= 0.98 and match_fraction(got, eager) >= 0.98, (case, runtime, image.shape)


def test_graph_uses_standard_operators(exported):
    import onnx

    case, model, folder = exported
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    pooler = "MaxRoiPool" if case == "vgg16" else "RoiAlign"
    assert {"NonMaxSuppression", "TopK", "Resize", pooler} <= ops
    assert not ops & {"Loop", "If", "Scan"}
    meta = read_metadata(folder / "model.onnx")
    assert json.loads(meta["class_names"]) == [f"class{i}" for i in range(model.num_classes)]
    assert read_metadata(folder / "model.xml")["class_names"] == meta["class_names"]


@pytest.mark.parametrize("preset", ["tiny", "resnet50_c4", "mobilenet_v3_large_320_fpn"])
def test_fuse_batchnorm_same_outputs_and_state_dict_kept(preset):
    model = _model(preset) if preset in CASES else FasterRCNN.from_preset(preset).eval()
    keys = set(model.state_dict())
    image = torch.rand(3, 200, 260, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.backbone(model.transform([image])[0].tensors)
        fused = fuse_batchnorm(__import__("copy").deepcopy(model))
        after = fused.backbone(model.transform([image])[0].tensors)
    assert set(model.state_dict()) == keys  # the unfused model is untouched
    assert not any("bn" in k or "running_mean" in k for k in fused.state_dict())
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-4, atol=1e-4 * float(before[name].abs().max()))
    with pytest.raises(ValueError, match="inference"):
        fuse_batchnorm(FasterRCNN.from_preset("tiny").train())


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from fasterrcnn.engine.checkpoint import save_checkpoint

    model = _model("tiny")
    cfg = get_preset("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    model_cfg = to_dict(model.config)
    save_checkpoint(path, {"model": model.state_dict(), "config": {"model": model_cfg, "train": to_dict(cfg.train)}, "class_names": ["circle", "cross", "square", "star", "triangle"]})
    return path


def test_detector_and_commands_run_an_exported_model(tiny_checkpoint, tmp_path, capsys):
    from fasterrcnn.cli import main
    from fasterrcnn.cli import export
    from fasterrcnn.data import write_synthetic_voc

    parser = __import__("argparse").ArgumentParser()
    export.add_parser(parser.add_subparsers())
    onnx_path = tmp_path / "tiny.onnx"
    args = parser.parse_args(["export", "--weights", str(tiny_checkpoint), "--output", str(onnx_path)])
    assert args.func(args) == 0 and "wrote" in capsys.readouterr().out
    xml_path = tmp_path / "tiny.xml"  # export's OpenVINO IR is the ONNX graph converted (the parity cases convert)
    args = parser.parse_args(["export", "--weights", str(tiny_checkpoint), "--output", str(xml_path)])
    assert args.func(args) == 0
    converted = onnx_to_openvino(onnx_path, tmp_path / "converted" / "tiny.xml")
    assert converted == [tmp_path / "converted" / "tiny.xml", tmp_path / "converted" / "tiny.bin"]
    assert converted[1].read_bytes() == xml_path.with_suffix(".bin").read_bytes()
    assert read_metadata(converted[0]) == read_metadata(xml_path) == read_metadata(onnx_path)
    eager = Detector.from_checkpoint(tiny_checkpoint, device="cpu")
    unfused = Detector.from_checkpoint(tiny_checkpoint, device="cpu", fuse=False)
    assert set(unfused.model.state_dict()) == set(torch.load(tiny_checkpoint, weights_only=True)["model"])
    deployed = Detector.from_checkpoint(onnx_path, device="cpu")
    assert deployed.class_names == eager.class_names and deployed.model.transform.min_size == 256
    image = torch.rand(3, 240, 300, generator=torch.Generator().manual_seed(3))
    a, b = eager.detect(image, 0.0), deployed.detect(image, 0.0)
    as_arrays = lambda ds: ([d.box for d in ds], [d.label for d in ds], [d.score for d in ds])  # noqa: E731
    assert len(a) > 10 and match_fraction(as_arrays(a), as_arrays(b)) >= 0.98 and match_fraction(as_arrays(b), as_arrays(a)) >= 0.98
    voc = write_synthetic_voc(tmp_path / "voc", num_train=1, num_test=3)
    assert main(["predict", "--weights", str(onnx_path), str(voc / "JPEGImages"), "--output", str(tmp_path / "pred"), "--quiet"]) == 0
    assert len(list((tmp_path / "pred").glob("*.jpg"))) == 4
    assert main(["eval", "--weights", str(onnx_path), "--data", str(voc), "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    assert "mAP" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_export_creates_its_folder_and_never_replaces_a_file_unasked(tiny_checkpoint, tmp_path, capsys):
    from fasterrcnn.cli import main

    written = export(tiny_checkpoint, tmp_path / "new" / "folder" / "tiny.onnx").files  # folders created
    assert written == [tmp_path / "new" / "folder" / "tiny.onnx"] and written[0].stat().st_size > 0
    weights = tmp_path / "tiny.bin"
    weights.write_bytes(b"someone else's file")
    assert main(["export", "--weights", str(tiny_checkpoint), "--output", str(tmp_path / "tiny.xml")]) == 2
    assert re.search(rf"{re.escape(str(weights))} exists; pass --overwrite", capsys.readouterr().err)
    assert weights.read_bytes() == b"someone else's file" and not (tmp_path / "tiny.xml").exists()
    assert export_files(tmp_path / "m.onnx", "openvino") == ("openvino", [tmp_path / "m.onnx", tmp_path / "m.bin"])
    assert export_files(tmp_path / "m.xml") == ("openvino", [tmp_path / "m.xml", tmp_path / "m.bin"])


# -- Exported files that fasterrcnn export never writes: one line naming the file, never a traceback -------------
@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    return export(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx").files[0]


def with_metadata(source, path, **changes):
    """A copy of the .onnx ``source`` at ``path`` with metadata entries changed (None: removed)."""
    import onnx

    proto = onnx.load(str(source))
    entries = {entry.key: entry.value for entry in proto.metadata_props} | changes
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in entries.items() if v is not None})
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    "changes, problem",
    [
        (dict(class_names="circle, cross"), "the metadata's class_names is not valid JSON (line 1 column 1: Expecting value)"),
        (dict(class_names='{"circle": 1}'), "the metadata's class_names is not a list of class names"),
        (dict(class_names="[1, 2, 3, 4, 5]"), "the metadata's class_names is not a list of class names"),
        (dict(class_names="[" * 20000 + "]" * 20000), "the metadata's class_names is JSON nested too deeply to read"),
        (dict(config="[256, 512]"), "the metadata's config is a list, expected a mapping of model fields"),
        (dict(config='{"min_size": "256", "max_size": 512}'), "the metadata's config has min_size '256' and max_size 512, expected whole numbers"),
        (dict(config='{"min_size": -3, "max_size": 512}'), "the metadata's config has min_size -3 and max_size 512"),
        (dict(config='{"min_size": 100000, "max_size": 100000}'), "the metadata's config has min_size 100000 and max_size 100000"),
        (dict(config=None), "no config in the file's metadata (not written by fasterrcnn export)"),
    ],
)  # fmt: skip
def test_malformed_export_metadata_is_one_line(tiny_onnx, tmp_path, changes, problem):
    path = with_metadata(tiny_onnx, tmp_path / "tampered.onnx", **changes)
    with pytest.raises(DataError) as info:
        Detector.from_checkpoint(path)
    assert str(info.value).startswith(f"{path}: {problem}")


def test_graph_outputs_out_of_range_or_misshaped_are_one_line(tiny_onnx, tmp_path, capsys):
    import onnx

    from fasterrcnn.cli import main
    from fasterrcnn.deploy.runtime import ExportedModel, ModelOutputError

    proto = onnx.load(str(tiny_onnx))  # labels + 7: outside the 5 classes
    output = next(o for o in proto.graph.output if o.name == "labels")
    producer = next(node for node in proto.graph.node if "labels" in node.output)
    producer.output[list(producer.output).index("labels")] = "labels_raw"
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(7, dtype=np.int64), "seven"))
    proto.graph.node.append(onnx.helper.make_node("Add", ["labels_raw", "seven"], [output.name]))
    shifted = tmp_path / "shifted.onnx"
    onnx.save(proto, str(shifted))
    image = torch.rand(3, 240, 300, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ModelOutputError, match=rf"^{re.escape(str(shifted))}: the graph answered labels 8\.\.12, outside 1\.\.5 \(its 5 classes\)$"):
        Detector.from_checkpoint(shifted).detect(image, 0.0)
    picture = tmp_path / "picture.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(picture)
    code = main(["predict", "--weights", str(shifted), str(picture), "--output", str(tmp_path / "p"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"fasterrcnn: error: {shifted}: the graph answered labels 8..12") and len(err.splitlines()) == 1

    meta = read_metadata(tiny_onnx)
    boxes, labels, scores = np.zeros((2, 4), np.float32), np.array([1, 2]), np.array([0.9, 0.8], np.float32)
    cases = [
        ((boxes, np.array([1, -3]), scores), "the graph answered labels -3..1, outside 1..5 (its 5 classes)"),
        ((boxes, np.array([0, 1]), scores), "the graph answered labels 0..1, outside 1..5 (its 5 classes)"),
        ((boxes[:, :3], labels, scores), "the graph answered shapes [2, 3], [2], [2], expected [D, 4], [D], [D]"),
        ((boxes, labels, scores[:1]), "the graph answered shapes [2, 4], [2], [1], expected [D, 4], [D], [D]"),
        ((boxes, labels), "the graph answered 2 outputs, expected boxes, labels and scores"),
        ((boxes, labels.astype(np.float32), scores), "the graph answered float32 boxes, float32 labels and float32 scores"),
    ]
    for outputs, problem in cases:
        model = ExportedModel(lambda image, outputs=outputs: outputs, meta, tiny_onnx)
        with pytest.raises(ModelOutputError) as info:
            model([image])
        assert str(info.value) == f"{tiny_onnx}: {problem}"


def test_a_file_of_the_other_format_or_with_external_data_is_named(tiny_onnx, tmp_path):
    import onnx

    as_xml = tmp_path / "model.xml"
    as_xml.write_bytes(tiny_onnx.read_bytes())
    as_xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"model\.xml: not an OpenVINO model file \(an ONNX model: name it \.onnx\)$"):
        Detector.from_checkpoint(as_xml)
    broken = tmp_path / "broken.xml"
    broken.write_text('<?xml version="1.0"?>\n<net name="x" version="11"><layers><layer id="0" type="Bogus"/></layers></net>\n')
    broken.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(DataError) as info:  # OpenVINO's own error, without its source-file lines
        Detector.from_checkpoint(broken)
    assert str(info.value) == f"{broken}: not a loadable exported model (Converting input model: node <layer> is missing mandatory attribute: version at offset 58)"
    broken.with_suffix(".bin").unlink()
    with pytest.raises(DataError, match=r"broken\.xml: its weights file broken\.bin is missing"):
        Detector.from_checkpoint(broken)
    as_onnx = tmp_path / "model.onnx"
    as_onnx.write_bytes(broken.read_bytes())
    with pytest.raises(DataError, match=r"model\.onnx: not an ONNX model \(it is XML: an OpenVINO model is named NAME\.xml\)$"):
        Detector.from_checkpoint(as_onnx)

    external = tmp_path / "external" / "model.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(str(tiny_onnx)), str(external), save_as_external_data=True, location="weights.data", size_threshold=0)
    with open(external.parent / "weights.data", "r+b") as f:
        f.truncate(8 * 2**30)  # sparse: 8 GiB that the runtime would read into memory
    with pytest.raises(DataError, match=r"model\.onnx: its weights are in external data files, which fasterrcnn export never writes"):
        Detector.from_checkpoint(external)


def test_a_calibrated_temperature_and_score_map_are_baked_into_the_graph(tmp_path):
    model = _model("tiny")
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(300)  # confident scores, which a temperature moves
    model.roi_heads.temperature = 3.0  # as built from a checkpoint that 'fasterrcnn calibrate' wrote
    model.roi_heads.score_map = (0.5, -1.0)
    export_model(model, tmp_path / "model.onnx", [f"class{i}" for i in range(model.num_classes)])
    image = _images()[0]
    with torch.no_grad():
        eager = model([image])[0]
        model.roi_heads.score_map = None
        unmapped = model([image])[0]
        model.roi_heads.temperature = 1.0
        plain = model([image])[0]
    got = load_exported(tmp_path / "model.onnx")([image])[0]
    as_tuple = lambda d: (d["boxes"], d["labels"], d["scores"])  # noqa: E731
    assert len(eager["scores"]) > 10 and match_fraction(as_tuple(eager), as_tuple(got)) >= 0.98
    assert match_fraction(as_tuple(plain), as_tuple(got)) < 0.5  # the scores of T = 1 are not what the graph gives
    assert match_fraction(as_tuple(unmapped), as_tuple(got)) < 0.5  # nor those without the map


@pytest.mark.parametrize("missing, output", [("onnx", "tiny.onnx"), ("openvino", "tiny.xml")])
def test_export_without_the_deploy_extra_says_how_to_install_it(tiny_checkpoint, tmp_path, capsys, monkeypatch, missing, output):
    """The slim install (no onnx / openvino): one line naming the extra, exit 2, nothing written."""
    from fasterrcnn.cli import main

    monkeypatch.setitem(sys.modules, missing, None)  # ``import`` of it raises ImportError
    assert main(["export", "--weights", str(tiny_checkpoint), "--output", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'fasterrcnn[deploy]'" in err and f"needs the {missing} package" in err
    assert list(tmp_path.iterdir()) == []
