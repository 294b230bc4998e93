"""Batching: collate, aspect-ratio grouped batches, and reproducible epochs.

Reproducibility contract of ``build_loader``: the batches of an epoch and the random
augmentation of every sample depend only on ``(seed, epoch)`` -- not on the number of workers,
on earlier epochs, or on torch's global RNG (which the loader leaves untouched).

- The sample order comes from a sampler with ``set_epoch`` (``EpochSampler`` by default, or e.g.
  ``DistributedSampler``), grouped into batches by ``GroupedBatchSampler``.
- ``SeededBatchSampler`` tags every index with a seed ``mix(seed, epoch, index)``; the dataset
  wrapper runs the sample's transforms with torch's global RNG seeded from it (inside
  ``torch.random.fork_rng``), so ``RandomHorizontalFlip()`` is reproducible per sample.
- A ``DataError`` of a sample (unreadable image ...) reaches the caller as that ``DataError``, also
  from worker processes -- unless the dataset's ``on_bad_image`` is ``"skip"``: then the sample
  is replaced by that of the next index (cyclically) whose image loads, with the same sample
  seed, the file is named in one warning (once, by the main process) and listed in
  ``loader.skipped``. Which sample replaces which depends on the files only, so this contract
  holds over bad images too (see ``data/bad_images.py``).
- Worker processes ignore SIGINT: a Ctrl-C in the terminal reaches the whole process group, and
  the main process (the trainer) decides when to stop, after which it ends the workers. SIGTERM
  keeps its default (multiprocessing ends workers with it); one sent to the whole group ends the
  workers at once, and the trainer still stops cleanly (``engine/interrupt.py``).
- Data parallel (``num_replicas`` > 1): every process builds the same global batches of
  ``batch_size * num_replicas`` indices and takes its slice (``ShardedBatchSampler``), so the
  processes see disjoint shards of exactly the batches one process would see with the global batch
  size, aspect-ratio grouping included.
- Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch. To resume in the middle of an
  epoch, ``loader.batch_sampler.set_epoch(epoch, start_batch=n)`` skips the first ``n`` batches
  without loading them; the remaining batches are exactly those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import signal

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from fasterrcnn.errors import DataError

_MASK64 = (1 << 64) - 1

logger = logging.getLogger("fasterrcnn")


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 finaliser applied to each value)."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = ((h ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h >> 1


class _SampleError:
    """A ``DataError`` raised in a worker process, carried to the main process as a batch.

    DataLoader re-raises worker exceptions as ``RuntimeError`` with a traceback in the message;
    the loader of ``build_loader`` raises the ``DataError`` itself, one line, as the CLI expects.
    """

    def __init__(self, error: DataError):
        self.path = error.path
        self.problem = error.problem


class _Replacement:
    """A sample that replaces the samples of unreadable images; ``skipped``: their ``(file, problem)``."""

    def __init__(self, sample, skipped: list[tuple[str, str]]):
        self.sample = sample
        self.skipped = skipped


class _NotedBatch:
    """A batch with replaced samples: ``_Loader`` reports ``skipped`` and yields ``(images, targets)``."""

    def __init__(self, images, targets, skipped: list[tuple[str, str]]):
        self.images = images
        self.targets = targets
        self.skipped = skipped


def collate(batch):
    """``[(image, target), ...] -> (list of images, list of targets)`` (images keep their sizes)."""
    failure = next((item for item in batch if isinstance(item, _SampleError)), None)
    if failure is not None:
        return failure
    skipped = [note for item in batch if isinstance(item, _Replacement) for note in item.skipped]
    batch = [item.sample if isinstance(item, _Replacement) else item for item in batch]
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    if skipped:
        return _NotedBatch(images, targets, skipped)
    return images, targets


def ignore_interrupts(worker_id: int = 0) -> None:
    """``worker_init_fn`` of data-loading workers: a Ctrl-C (SIGINT) is the main process's business.

    SIGTERM keeps its default action: Python's multiprocessing ends the workers still running at
    exit with it (and waits for them). When a SIGTERM sent to the whole process group ends them
    during training, the trainer still stops cleanly (``engine/interrupt.py``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EpochSampler(Sampler[int]):
    """Every index of ``range(size)`` once per epoch: in order, or shuffled by ``(seed, epoch)``."""

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0):
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def aspect_ratio_group_ids(dataset) -> list[int]:
    """Group of every image: 0 portrait (width < height), 1 landscape or square.

    Uses ``dataset.image_size(i) -> (h, w)`` (no decoding); a ``torch.utils.data.Subset`` is
    followed to its dataset.
    """
    if isinstance(dataset, Subset):
        base = aspect_ratio_group_ids(dataset.dataset)
        return [base[i] for i in dataset.indices]
    if not hasattr(dataset, "image_size"):
        raise ValueError(f"{type(dataset).__name__} has no image_size(i); use group_by_aspect_ratio=False")
    group_ids = []
    for i in range(len(dataset)):
        height, width = dataset.image_size(i)
        group_ids.append(0 if width < height else 1)
    return group_ids


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices from ``sampler`` that share a group id.

    Indices are taken in the sampler's order; a batch is emitted as soon as its group has
    ``batch_size`` indices. When the sampler is exhausted, the incomplete batch of each group is
    emitted (in order of the groups' first appearance) unless ``drop_last``. Every index of the
    sampler therefore appears exactly once per epoch (``drop_last=False``), never repeated.

    ``sampler`` may be any sampler whose order is a function of its epoch (``EpochSampler``,
    ``DistributedSampler``); ``set_epoch`` is forwarded to it. ``group_ids[i]`` is the group of
    dataset index ``i`` (see ``aspect_ratio_group_ids``).
    """

    def __init__(self, sampler, group_ids, batch_size: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        buffers: dict[int, list[int]] = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()
        if not self.drop_last:
            for buffer in buffers.values():
                if buffer:
                    yield list(buffer)

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for index in self.sampler:
            group = self.group_ids[index]
            counts[group] = counts.get(group, 0) + 1
        full = sum(n // self.batch_size for n in counts.values())
        partial = 0 if self.drop_last else sum(1 for n in counts.values() if n % self.batch_size)
        return full + partial


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s share of every global batch of ``batch_sampler`` (data-parallel training).

    A full global batch of ``num_replicas * b`` indices gives rank ``r`` its indices
    ``r * b .. (r + 1) * b - 1``. An incomplete one (end of an epoch, ``m`` indices) is repeated
    cyclically up to ``num_replicas * ceil(m / num_replicas)`` indices and split the same way, so that
    every rank gets a non-empty batch of the same size from the same group (like
    ``DistributedSampler``'s padding: a few images of such a batch count twice). Every rank has
    ``len(batch_sampler)`` batches per epoch; with ``num_replicas=1`` the batches are unchanged.
    """

    def __init__(self, batch_sampler, num_replicas: int, rank: int):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..num_replicas-1 and num_replicas >= 1, got rank {rank} of {num_replicas}")
        self.batch_sampler = batch_sampler
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self):
        for batch in self.batch_sampler:
            size = -(-len(batch) // self.num_replicas)  # ceil
            padded = [batch[i % len(batch)] for i in range(size * self.num_replicas)]
            yield padded[self.rank * size : (self.rank + 1) * size]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, sample_seed)`` with ``sample_seed = mix_seed(seed, epoch, index)``.

    ``set_epoch(epoch, start_batch=0)`` selects the epoch (forwarded to the wrapped batch sampler)
    and skips its first ``start_batch`` batches, for resuming mid-epoch.
    """

    def __init__(self, batch_sampler, seed: int):
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self):
        for number, batch in enumerate(self.batch_sampler):
            if number >= self.start_batch:
                yield [(index, mix_seed(self.seed, self.epoch, index)) for index in batch]

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.start_batch, 0)


class SeededDataset(torch.utils.data.Dataset):
    """``dataset[(index, sample_seed)]``: ``dataset[index]`` with torch's RNG seeded for the sample.

    The global RNG state of the calling process is restored afterwards. Other attributes
    (``classes``, ``ground_truth`` ...) are those of the wrapped ``dataset``. With
    ``dataset.on_bad_image == "skip"``, an index whose sample raises ``DataError`` is replaced by
    the next one (cyclically) that loads, with the same sample seed (see the module docstring).
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self._bad: set[int] = set()  # indices found unreadable in this process

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, sample_seed = key
        skip = getattr(self.dataset, "on_bad_image", "error") == "skip"
        size = len(self.dataset)
        skipped: list[tuple[str, str]] = []
        first_error = None
        for step in range(size if skip else 1):
            candidate = (index + step) % size
            if candidate in self._bad:
                continue
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed)
                    sample = self.dataset[candidate]
            except DataError as error:
                if not skip:
                    if torch.utils.data.get_worker_info() is None:
                        raise
                    return _SampleError(error)
                self._bad.add(candidate)
                skipped.append((error.path, error.problem))
                first_error = first_error or error
                continue
            return _Replacement(sample, skipped) if skipped else sample
        error = DataError(
            first_error.path if first_error else "data set",
            f"no image of the data set can be read ({first_error.problem if first_error else 'all skipped'})",
        )
        if torch.utils.data.get_worker_info() is None:
            raise error
        return _SampleError(error)

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _Loader(DataLoader):
    """A DataLoader that raises a worker's ``DataError`` unchanged (see ``_SampleError``) and
    reports replaced samples: one warning per file, ``skipped`` {file: problem}."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, str] = {}

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, _SampleError):
                raise DataError(batch.path, batch.problem)
            if isinstance(batch, _NotedBatch):
                for path, problem in batch.skipped:
                    if path not in self.skipped:
                        self.skipped[path] = problem
                        logger.warning("%s: %s; sample replaced by the next readable image", path, problem)
                batch = (batch.images, batch.targets)
            yield batch

    def shutdown_workers(self) -> None:
        """End the persistent workers now (joined, and no longer watched by PyTorch's SIGCHLD check).

        The trainer calls it when it stops on a signal sent to the whole process group: the workers
        are ending too, and once its own SIGCHLD handler is restored PyTorch would report their
        expected end as a crash ("DataLoader worker ... is killed by signal"). A later ``iter`` starts
        new workers.
        """
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def build_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    group_by_aspect_ratio: bool = True,
    sampler=None,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A DataLoader of ``(list of images, list of targets)`` batches, reproducible per ``(seed, epoch)``.

    ``sampler`` (e.g. ``DistributedSampler``) replaces the default ``EpochSampler(len(dataset),
    shuffle=shuffle, seed=seed)``; ``shuffle`` is then the sampler's business. Call
    ``loader.batch_sampler.set_epoch(epoch[, start_batch])`` before every epoch.
    ``loader.dataset`` forwards attributes (``classes`` ...) to ``dataset``.
    ``num_replicas`` > 1 (data-parallel training): the batches are this ``rank``'s shards of global
    batches of ``batch_size * num_replicas`` (``ShardedBatchSampler``); ``batch_size`` is per process.
    """
    if sampler is None:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    group_ids = aspect_ratio_group_ids(dataset) if group_by_aspect_ratio else [0] * len(dataset)
    batches = GroupedBatchSampler(sampler, group_ids, batch_size * num_replicas, drop_last=drop_last)
    if num_replicas > 1:
        batches = ShardedBatchSampler(batches, num_replicas, rank)
    batches = SeededBatchSampler(batches, seed)
    return _Loader(
        SeededDataset(dataset),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        # The loader draws its workers' base seed from this generator, not from the global RNG.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_interrupts if num_workers > 0 else None,
    )


__all__ = [
    "EpochSampler",
    "GroupedBatchSampler",
    "SeededBatchSampler",
    "SeededDataset",
    "ShardedBatchSampler",
    "aspect_ratio_group_ids",
    "build_loader",
    "collate",
    "ignore_interrupts",
    "mix_seed",
]
