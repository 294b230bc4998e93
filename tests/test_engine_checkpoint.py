"""Checkpoints: atomic writes, weights_only loading, unsafe pickles refused, RNG state round trip."""

from __future__ import annotations

import os
import pickle
import random
import warnings

import numpy as np
import pytest
import torch

from fasterrcnn.engine.checkpoint import (
    check_model_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from fasterrcnn.errors import DataError


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "iteration": 7, "names": ["a", "b"]})
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(3.0))
    assert state["iteration"] == 7 and state["names"] == ["a", "b"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "bad": Unpicklable()})
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(3.0)) and state["iteration"] == 7
    assert sorted(os.listdir(path.parent)) == ["last.pt"]  # no temporary file left behind


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_reduce_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(DataError, match="refused to load") as info:
        load_checkpoint(path)
    assert info.value.path == str(path)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(DataError, match="refused to load"):
        load_checkpoint(raw)


def test_checkpoint_missing_truncated_and_empty(tmp_path):
    with pytest.raises(DataError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"a": torch.ones(1000)})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_checkpoint(tmp_path / "empty.pt")
    assert str(info.value) == f"{tmp_path / 'empty.pt'}: not a checkpoint (the file is empty)"
    (tmp_path / "random.pt").write_bytes(bytes(range(200, 256)))  # not a pickle: no mention of code it could run
    with pytest.raises(DataError) as info:
        load_checkpoint(tmp_path / "random.pt")
    assert str(info.value) == f"{tmp_path / 'random.pt'}: not a checkpoint (it is neither a zip archive nor a pickle)"
    save_checkpoint(tmp_path / "list.pt", [1, 2])
    with pytest.raises(DataError, match="not a fasterrcnn checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(6)
    random.seed(6)
    np.random.seed(6)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and got[2] == expected[2]


def test_check_model_checkpoint_names_what_is_missing(tmp_path):
    check_model_checkpoint({"model": {}, "config": {"model": {}}, "class_names": ["a"]}, tmp_path / "ok.pt")
    with pytest.raises(DataError, match=r"missing class_names"):
        check_model_checkpoint({"model": {}, "config": {"model": {}}}, tmp_path / "x.pt")
    with pytest.raises(DataError, match=r"missing config\['model'\]"):
        check_model_checkpoint({"model": {}, "config": {}, "class_names": []}, tmp_path / "x.pt")


def test_a_checkpoint_of_another_pickle_protocol_loads_without_a_warning(tmp_path):
    path = tmp_path / "p3.pt"
    torch.save({"iteration": 3}, path, pickle_protocol=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_checkpoint(path) == {"iteration": 3}
    assert [str(w.message) for w in caught] == []
