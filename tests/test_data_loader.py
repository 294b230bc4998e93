import pytest
import torch
from torch.utils.data import DistributedSampler, Subset

from fasterrcnn.data.loader import (
    EpochSampler,
    GroupedBatchSampler,
    aspect_ratio_group_ids,
    build_loader,
    collate,
    mix_seed,
)
from fasterrcnn.data.transforms import RandomHorizontalFlip
from fasterrcnn.errors import DataError

# sizes (h, w): portrait when w < h
SIZES = [(10, 20), (20, 10), (10, 10), (30, 10), (10, 30), (40, 20), (5, 6), (6, 5), (8, 8), (9, 3), (3, 9)]
GROUPS = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]


class TinyDataset(torch.utils.data.Dataset):
    """Image i is filled with i; one box [0, 0, 1, 1]; optional transforms."""

    classes = ("thing",)

    def __init__(self, transforms=None):
        self.transforms = transforms

    def __len__(self):
        return len(SIZES)

    def image_size(self, i):
        return SIZES[i]

    def __getitem__(self, i):
        image = torch.full((3, *SIZES[i]), float(i))
        target = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([1]), "image_id": i}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def test_collate_lists():
    batch = [(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 5), {"a": 2})]
    images, targets = collate(batch)
    assert isinstance(images, list)
    assert [tuple(i.shape) for i in images] == [(3, 2, 2), (3, 4, 5)]
    assert targets == [{"a": 1}, {"a": 2}]


def test_aspect_ratio_groups_and_subset():
    assert aspect_ratio_group_ids(TinyDataset()) == GROUPS
    assert aspect_ratio_group_ids(Subset(TinyDataset(), [3, 0, 1])) == [0, 1, 0]


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(50, shuffle=True, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    assert first != list(range(50))
    assert list(EpochSampler(50, shuffle=True, seed=1)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochSampler(50, shuffle=True, seed=2)) != first
    assert list(EpochSampler(5, shuffle=False, seed=1)) == [0, 1, 2, 3, 4]
    assert len(sampler) == 50


def test_grouped_batches_pure_complete_and_deterministic():
    sampler = EpochSampler(len(GROUPS), shuffle=True, seed=0)
    batches = GroupedBatchSampler(sampler, GROUPS, batch_size=2)
    epochs = []
    for epoch in range(3):
        batches.set_epoch(epoch)
        epoch_batches = list(batches)
        assert len(epoch_batches) == len(batches) == 6  # 6 landscape -> 3 batches, 5 portrait -> 3
        assert sorted(i for b in epoch_batches for i in b) == list(range(len(GROUPS)))
        for batch in epoch_batches:
            assert 1 <= len(batch) <= 2
            assert len({GROUPS[i] for i in batch}) == 1
        epochs.append(epoch_batches)
    assert epochs[0] != epochs[1]
    batches.set_epoch(1)
    assert list(batches) == epochs[1]
    again = GroupedBatchSampler(EpochSampler(len(GROUPS), shuffle=True, seed=0), GROUPS, batch_size=2)
    again.set_epoch(2)
    assert list(again) == epochs[2]


def test_grouped_batches_order_and_drop_last():
    sampler = list(range(len(GROUPS)))  # any iterable of indices works
    batches = GroupedBatchSampler(sampler, GROUPS, batch_size=2)
    assert list(batches) == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9]]
    batches = GroupedBatchSampler(sampler, GROUPS, batch_size=4, drop_last=True)
    assert list(batches) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert len(batches) == 2


def test_wraps_distributed_sampler_and_forwards_set_epoch():
    seen = set()
    for rank in (0, 1):
        sampler = DistributedSampler(TinyDataset(), num_replicas=2, rank=rank, shuffle=True, seed=5)
        batches = GroupedBatchSampler(sampler, GROUPS, batch_size=2)
        batches.set_epoch(3)
        assert sampler.epoch == 3
        epoch_batches = list(batches)
        indices = [i for b in epoch_batches for i in b]
        assert sorted(indices) == sorted(sampler)
        assert all(len({GROUPS[i] for i in b}) == 1 for b in epoch_batches)
        seen.update(indices)
    assert seen == set(range(len(GROUPS)))


def run_epoch(loader, epoch, start_batch=0):
    loader.batch_sampler.set_epoch(epoch, start_batch=start_batch)
    return [
        ([t["image_id"] for t in targets], [t["boxes"].tolist() for t in targets], [i[0, 0, 0].item() for i in images])
        for images, targets in loader
    ]


def test_loader_reproducible_per_seed_and_epoch_with_augmentation():
    make = lambda seed, workers=0: build_loader(  # noqa: E731
        TinyDataset(RandomHorizontalFlip(0.5)), batch_size=2, shuffle=True, seed=seed, num_workers=workers
    )
    loader = make(0)
    assert loader.dataset.classes == ("thing",)
    first = run_epoch(loader, 0)
    assert len(first) == len(loader) == 6
    ids = [i for batch, _, _ in first for i in batch]
    assert sorted(ids) == list(range(len(SIZES)))
    assert all(len({GROUPS[i] for i in batch}) == 1 for batch, _, _ in first)
    flipped = [boxes == [[0.0, 0.0, 1.0, 1.0]] for _, batch_boxes, _ in first for boxes in batch_boxes]
    assert 0 < flipped.count(False) < len(flipped)  # some samples flipped, some not

    torch.manual_seed(123)  # the global RNG plays no part ...
    state = torch.get_rng_state()
    assert run_epoch(make(0), 0) == first
    assert torch.equal(torch.get_rng_state(), state)  # ... and is left untouched
    assert run_epoch(loader, 1) != first
    assert run_epoch(loader, 0) == first
    assert run_epoch(make(1), 0) != first
    assert run_epoch(make(0, workers=1), 0) == first


def test_resume_mid_epoch_skips_batches_exactly():
    loader = build_loader(TinyDataset(RandomHorizontalFlip(0.5)), batch_size=2, shuffle=True, seed=7)
    full = run_epoch(loader, 4)
    loader.batch_sampler.set_epoch(4, start_batch=2)
    assert len(loader) == len(full) - 2
    assert run_epoch(loader, 4, start_batch=2) == full[2:]
    assert run_epoch(loader, 4) == full


def test_loader_without_grouping_and_without_shuffle():
    loader = build_loader(TinyDataset(), batch_size=4, shuffle=False, group_by_aspect_ratio=False)
    assert [batch for batch, _, _ in run_epoch(loader, 0)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    loader = build_loader(TinyDataset(), batch_size=4, shuffle=False, group_by_aspect_ratio=False, drop_last=True)
    assert [batch for batch, _, _ in run_epoch(loader, 0)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_mix_seed_spreads_and_fits_in_63_bits():
    seeds = {mix_seed(0, epoch, index) for epoch in range(3) for index in range(100)}
    assert len(seeds) == 300
    assert all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(1, 2) != mix_seed(2, 1)


class BrokenDataset(TinyDataset):
    def __getitem__(self, i):
        if i == 4:
            raise DataError(f"/data/{i}.jpg", "cannot read image (truncated)")
        return super().__getitem__(i)


@pytest.mark.parametrize("workers", [0, 1])
def test_data_error_of_a_sample_reaches_the_caller_unchanged(workers):
    loader = build_loader(BrokenDataset(), batch_size=2, shuffle=False, num_workers=workers)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value) == "/data/4.jpg: cannot read image (truncated)"


LEAVE_WORKERS_RUNNING = """
import torch
from fasterrcnn.data.loader import build_loader

class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 8
    def image_size(self, i):
        return (16, 16)
    def __getitem__(self, i):
        return torch.zeros(3, 16, 16), {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([1])}

batches = iter(build_loader(Images(), batch_size=2, shuffle=True, num_workers=2))
next(batches)
print("one batch", flush=True)
"""


def test_a_process_that_leaves_its_workers_running_still_exits(tmp_path):
    """At exit, Python's multiprocessing ends the (persistent) workers still running with SIGTERM and
    waits for them: a worker that ignored SIGTERM would hang the process for ever."""
    import subprocess
    import sys

    script = tmp_path / "leave.py"
    script.write_text(LEAVE_WORKERS_RUNNING)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "one batch\n", done.stderr
