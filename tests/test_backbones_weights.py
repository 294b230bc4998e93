"""Reading weight files safely and loading torchvision ImageNet classification layouts into the backbones."""

import pytest
import torch
from torch import nn
from torchvision_reference import key_layout

from fasterrcnn.errors import DataError
from fasterrcnn.modeling.backbones import build_backbone
from fasterrcnn.modeling.backbones.layers import FrozenBatchNorm2d
from fasterrcnn.modeling.backbones.weights import Route, load_routed_weights, load_state_dict_strictly, read_state_dict


class NotATensor:
    pass


def random_state(layout, seed=0, **shape_overrides):
    """A state dict with the keys, shapes and dtypes of ``layout`` (shapes replaceable per key)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in layout:
        shape = shape_overrides.get(key, shape)
        state[key] = torch.zeros(shape, dtype=torch.int64) if dtype == "int64" else torch.randn(shape, generator=g)
    return state


def save(tmp_path, state, name="weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- reading files


def test_read_state_dict_round_trip(tmp_path):
    path = save(tmp_path, {"a.weight": torch.arange(3.0)})
    state = read_state_dict(path)
    assert list(state) == ["a.weight"] and torch.equal(state["a.weight"], torch.arange(3.0))


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "weights file not found"),
        (b"definitely not a checkpoint", "not a PyTorch weights file (it is a text file)"),
        (b"\x80\x02not a checkpoint", "refused by safe loading"),
        ("truncated", "cannot read weights file (RuntimeError"),
        ({"a": NotATensor()}, "refused by safe loading (Unsupported global"),
        ([torch.zeros(1)], "not a state dict (a mapping of names to tensors); found list"),
        ({"a": torch.zeros(1), "b": 3}, "entries that are not tensors: b"),
    ],
)
def test_read_state_dict_errors_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        torch.save({"a": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(DataError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_read_state_dict_folder(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_state_dict(tmp_path)


# ---------------------------------------------------------------- routing


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.bn = FrozenBatchNorm2d(2)


def tiny_file_state():
    return {
        "stem.conv.weight": torch.full((2, 1, 1, 1), 2.0),
        "stem.conv.bias": torch.tensor([1.0, -1.0]),
        "stem.bn.weight": torch.tensor([3.0, 4.0]),
        "stem.bn.bias": torch.zeros(2),
        "stem.bn.running_mean": torch.zeros(2),
        "stem.bn.running_var": torch.ones(2),
        "stem.bn.num_batches_tracked": torch.tensor(5),
        "head.fc.weight": torch.ones(1, 2),
        "head.fc.bias": torch.zeros(1),
        "classifier.weight": torch.ones(10, 1),
    }


def tiny_routes():
    body, head = Tiny(), nn.Module()
    head.linear = nn.Linear(2, 1)
    return body, head, [Route("stem.", body), Route("head.fc.", head, "linear.")]


def test_routes_rename_and_ignore(tmp_path):
    body, head, routes = tiny_routes()
    path = save(tmp_path, tiny_file_state())
    load_routed_weights(path, routes, ignored=("classifier.",))
    assert torch.equal(body.conv.weight, torch.full((2, 1, 1, 1), 2.0))
    assert torch.equal(body.bn.weight, torch.tensor([3.0, 4.0]))
    assert torch.equal(head.linear.weight, torch.ones(1, 2))


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda s: s.pop("stem.bn.running_var"), "missing keys stem.bn.running_var"),
        (lambda s: s.pop("head.fc.bias"), "missing keys head.fc.bias"),
        (lambda s: s.update({"stem.extra.weight": torch.zeros(1)}), "unexpected keys stem.extra.weight"),
        (lambda s: s.update({"other": torch.zeros(1)}), "unexpected keys other"),
        (
            lambda s: s.update({"stem.conv.weight": torch.zeros(3, 1, 1, 1)}),
            "wrong shapes: stem.conv.weight is [3, 1, 1, 1], expected [2, 1, 1, 1]",
        ),
    ],
)
def test_routing_errors_name_keys_and_change_nothing(tmp_path, change, problem):
    body, head, routes = tiny_routes()
    before = {k: v.clone() for k, v in body.state_dict().items()}
    state = tiny_file_state()
    change(state)
    path = save(tmp_path, state)
    with pytest.raises(DataError) as info:
        load_routed_weights(path, routes, ignored=("classifier.",), layout="tiny test")
    assert str(info.value).startswith(f"{path}: does not match the tiny test layout: ")
    assert problem in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in body.state_dict().items())


def test_error_lists_a_few_keys_and_counts_the_rest(tmp_path):
    body, head, routes = tiny_routes()
    path = save(tmp_path, {"head.fc.weight": torch.ones(1, 2), "head.fc.bias": torch.zeros(1)})
    with pytest.raises(DataError) as info:
        load_routed_weights(path, routes)
    assert "missing keys stem.conv.weight, stem.conv.bias, stem.bn.weight (and 3 more)" in str(info.value)


# ---------------------------------------------------------------- torchvision classification layouts


def test_vgg16_file_loads_features_fc6_fc7(tmp_path):
    # The real features layout; the classifier shrunk (pool_size 1, width 16) to keep the file small.
    layout = key_layout("vgg16")
    state = random_state(
        layout, **{"classifier.0.weight": [16, 512], "classifier.0.bias": [16], "classifier.3.weight": [16, 16],
                   "classifier.3.bias": [16], "classifier.6.weight": [1000, 16]}
    )
    parts = build_backbone("vgg16", weights_path=save(tmp_path, state), representation_size=16, pool_size=1)
    features = parts.body["features"]
    assert torch.equal(features[0].weight, state["features.0.weight"])
    assert torch.equal(features[28].bias, state["features.28.bias"])
    assert torch.equal(parts.box_head.fc6.weight, state["classifier.0.weight"])
    assert torch.equal(parts.box_head.fc7.bias, state["classifier.3.bias"])
    assert not features[0].weight.requires_grad and features[10].weight.requires_grad

    del state["features.26.bias"]
    state["classifier.3.weight"] = torch.zeros(16, 15)
    with pytest.raises(DataError) as info:
        build_backbone("vgg16", weights_path=save(tmp_path, state, "bad.pth"), representation_size=16, pool_size=1)
    assert "missing keys features.26.bias" in str(info.value)
    assert "classifier.3.weight is [16, 15], expected [16, 16]" in str(info.value)


def test_from_preset_loads_a_backbone_file(tmp_path):
    """``FasterRCNN.from_preset(..., backbone_weights=PATH)``: the public way in (vgg16, classifier shrunk)."""
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    shrunk = {"classifier.0.weight": [16, 512], "classifier.0.bias": [16], "classifier.3.weight": [16, 16], "classifier.3.bias": [16], "classifier.6.weight": [1000, 16]}
    state = random_state(key_layout("vgg16"), seed=2, **shrunk)
    model = FasterRCNN.from_preset("vgg16", num_classes=3, representation_size=16, box_pool_size=1, backbone_weights=save(tmp_path, state))
    loaded = dict(model.named_parameters())
    for ours, theirs in [("backbone.features.0.weight", "features.0.weight"), ("backbone.features.28.bias", "features.28.bias"),
                         ("roi_heads.box_head.fc6.weight", "classifier.0.weight"), ("roi_heads.box_head.fc7.bias", "classifier.3.bias")]:  # fmt: skip
        assert torch.equal(loaded[ours], state[theirs]), ours
    with pytest.raises(DataError, match="missing.pth: weights file not found"):
        FasterRCNN.from_preset("vgg16", num_classes=3, backbone_weights=tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    state = random_state(key_layout("resnet50"), seed=1)
    return save(tmp_path_factory.mktemp("resnet50"), state), state


def test_resnet50_c4_file_loads_body_and_res5_head(resnet50_file):
    path, state = resnet50_file
    parts = build_backbone("resnet50", weights_path=path)
    assert torch.equal(parts.body["conv1"].weight, state["conv1.weight"])
    assert torch.equal(parts.body["bn1"].running_var, state["bn1.running_var"])
    assert torch.equal(parts.body["layer3"][5].bn3.bias, state["layer3.5.bn3.bias"])
    assert torch.equal(parts.box_head.layer4[0].downsample[0].weight, state["layer4.0.downsample.0.weight"])
    assert torch.equal(parts.box_head.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


def test_resnet50_fpn_file_loads_the_fpn_body(resnet50_file):
    path, state = resnet50_file
    parts = build_backbone("resnet50_fpn", weights_path=path)
    extractor = parts.body.body
    assert torch.equal(extractor["conv1"].weight, state["conv1.weight"])
    assert torch.equal(extractor["layer4"][2].bn3.running_mean, state["layer4.2.bn3.running_mean"])
    assert torch.equal(extractor["layer1"][0].conv2.weight, state["layer1.0.conv2.weight"])


def test_resnet_file_with_wrong_depth_is_refused(resnet50_file):
    path, _ = resnet50_file
    with pytest.raises(DataError) as info:
        build_backbone("resnet101", weights_path=path)
    message = str(info.value)
    assert "does not match the torchvision resnet101 layout: missing keys layer3.6.conv1.weight" in message
    assert "\n" not in message


def test_resnet101_file_loads(tmp_path):
    state = random_state(key_layout("resnet101"), seed=2)
    parts = build_backbone("resnet101", weights_path=save(tmp_path, state))
    assert [len(parts.body[f"layer{i}"]) for i in (1, 2, 3)] + [len(parts.box_head.layer4)] == [3, 4, 23, 3]
    assert torch.equal(parts.body["layer3"][22].conv2.weight, state["layer3.22.conv2.weight"])
    assert torch.equal(parts.box_head.layer4[1].bn1.weight, state["layer4.1.bn1.weight"])


def test_mobilenet_v3_large_file_loads_features(tmp_path):
    state = random_state(key_layout("mobilenet_v3_large"), seed=3)
    parts = build_backbone("mobilenet_v3_large_fpn", weights_path=save(tmp_path, state))
    extractor = parts.body.body
    assert torch.equal(extractor["0"][0].weight, state["features.0.0.weight"])
    assert torch.equal(extractor["4"].block[2].fc1.weight, state["features.4.block.2.fc1.weight"])
    assert torch.equal(extractor["16"][1].running_var, state["features.16.1.running_var"])

    state["features.4.block.2.fc1.weight"] = torch.zeros(24, 72)
    with pytest.raises(DataError, match=r"features.4.block.2.fc1.weight is \[24, 72\], expected \[24, 72, 1, 1\]"):
        build_backbone("mobilenet_v3_large_fpn", weights_path=save(tmp_path, state, "bad.pth"))


# ---------------------------------------------------------------- whole models


class TwoLayers(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.norm = FrozenBatchNorm2d(8)
        self.cls_score = nn.Linear(8, classes)


def test_load_state_dict_strictly_loads_a_fitting_state():
    source, target = TwoLayers(), TwoLayers()
    state = dict(source.state_dict(), **{"norm.num_batches_tracked": torch.tensor(3)})  # dropped by frozen BatchNorm
    load_state_dict_strictly(target, state, "w.pth", "the model")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_load_state_dict_strictly_names_missing_unexpected_keys_and_shapes():
    # Another architecture's weights: the error names keys and shapes, and the model is unchanged.
    model = TwoLayers(classes=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = TwoLayers(classes=21).state_dict()
    other.pop("body.bias")
    for i in range(5):
        other[f"extra.{i}.weight"] = torch.zeros(1)
    with pytest.raises(DataError) as info:
        load_state_dict_strictly(model, other, "other.pth", "preset 'tiny'")
    assert str(info.value) == (
        "other.pth: weights do not fit preset 'tiny': missing keys body.bias; "
        "unexpected keys extra.0.weight, extra.1.weight, extra.2.weight (and 2 more); "
        "wrong shapes: cls_score.weight is [21, 8], expected [6, 8], cls_score.bias is [21], expected [6]"
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_load_state_dict_strictly_refuses_what_is_not_a_state_dict():
    with pytest.raises(DataError, match=r"^c.pt: weights do not fit the model: not a state dict \(found list\)$"):
        load_state_dict_strictly(TwoLayers(), [1, 2], "c.pt", "the model")
    state = dict(TwoLayers().state_dict(), **{"body.weight": [0.0]})
    with pytest.raises(DataError, match=r"^c.pt: weights do not fit the model: entries that are not tensors: body.weight$"):
        load_state_dict_strictly(TwoLayers(), state, "c.pt", "the model")


def test_a_stray_counter_outside_frozen_batchnorm_is_refused_on_one_line():
    state = dict(TwoLayers().state_dict(), **{"body.num_batches_tracked": torch.tensor(1)})
    with pytest.raises(DataError, match=r"^c.pt: weights do not fit the model \(Error\(s\) in loading state_dict .*body.num_batches_tracked"):
        load_state_dict_strictly(TwoLayers(), state, "c.pt", "the model")


def test_files_of_other_pickle_protocols_warn_nothing(tmp_path, recwarn):
    # torch's safe unpickler warns "Detected pickle protocol N" for such files: nothing the user can
    # act on.  Protocol 3 loads; protocol 4 (FRAME opcodes) is refused, with a one-line error only.
    path = tmp_path / "p3.pth"
    torch.save({"a.weight": torch.arange(3.0)}, path, pickle_protocol=3)
    assert torch.equal(read_state_dict(path)["a.weight"], torch.arange(3.0))
    torch.save({"a.weight": torch.arange(3.0)}, path, pickle_protocol=4)
    with pytest.raises(DataError, match="refused by safe loading"):
        read_state_dict(path)
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.timeout(30)  # the old code opened the named pipe to sniff it and waited for a writer forever
def test_a_named_pipe_as_weights_is_refused_before_it_is_opened(tmp_path):
    import os

    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    with pytest.raises(DataError) as info:
        read_state_dict(fifo)
    assert str(info.value) == f"{fifo}: is a named pipe (FIFO), not a regular file"
