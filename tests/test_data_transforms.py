import torch

from fasterrcnn.data.transforms import Compose, RandomHorizontalFlip, hflip_boxes


def sample():
    image = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3)  # [C=2, H=2, W=3]
    target = {
        "boxes": torch.tensor([[0.0, 1.0, 1.0, 2.0], [0.5, 0.0, 3.0, 1.5]]),
        "crowd_boxes": torch.tensor([[1.0, 0.0, 2.0, 1.0]]),
        "labels": torch.tensor([1, 2]),
        "image_id": "x",
    }
    return image, target


def test_flip_exact_values():
    assert torch.equal(hflip_boxes(torch.tensor([[0.0, 1.0, 1.0, 2.0]]), 3), torch.tensor([[2.0, 1.0, 3.0, 2.0]]))
    image, target = sample()
    flipped_image, flipped = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped_image[0, 0], torch.tensor([2.0, 1.0, 0.0]))
    assert torch.equal(flipped_image[1, 1], torch.tensor([11.0, 10.0, 9.0]))
    assert torch.equal(flipped["boxes"], torch.tensor([[2.0, 1.0, 3.0, 2.0], [0.0, 0.0, 2.5, 1.5]]))
    assert torch.equal(flipped["crowd_boxes"], torch.tensor([[1.0, 0.0, 2.0, 1.0]]))
    assert flipped["labels"] is target["labels"]
    assert flipped["image_id"] == "x"


def test_flip_does_not_modify_inputs_and_twice_is_identity():
    image, target = sample()
    original_image, original_target = sample()
    flip = RandomHorizontalFlip(p=1.0)
    twice_image, twice = flip(*flip(image, target))
    assert torch.equal(image, original_image)
    assert torch.equal(target["boxes"], original_target["boxes"])
    assert torch.equal(twice_image, original_image)
    assert torch.equal(twice["boxes"], original_target["boxes"])
    assert torch.equal(twice["crowd_boxes"], original_target["crowd_boxes"])


def test_probability_zero_returns_inputs_unchanged():
    image, target = sample()
    out_image, out_target = RandomHorizontalFlip(p=0.0)(image, target)
    assert out_image is image
    assert out_target is target


def test_empty_boxes():
    image = torch.zeros(3, 4, 5)
    _, target = RandomHorizontalFlip(p=1.0)(image, {"boxes": torch.zeros(0, 4)})
    assert target["boxes"].shape == (0, 4)


def decisions(flip, n=32):
    image, target = sample()
    return [not torch.equal(flip(image, target)[0], image) for _ in range(n)]


def test_seeded_generator_is_deterministic_and_random():
    first = decisions(RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(3)))
    second = decisions(RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(3)))
    other = decisions(RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(4)))
    assert first == second
    assert first != other
    assert 0 < sum(first) < len(first)


def test_global_rng_used_without_generator():
    torch.manual_seed(11)
    first = decisions(RandomHorizontalFlip(0.5))
    torch.manual_seed(11)
    assert decisions(RandomHorizontalFlip(0.5)) == first


def test_compose_applies_in_order():
    calls = []

    def step(name):
        def transform(image, target):
            calls.append(name)
            return image + 1, {**target, name: True}

        return transform

    image, target = Compose([step("a"), step("b")])(torch.zeros(1), {})
    assert calls == ["a", "b"]
    assert torch.equal(image, torch.tensor([2.0]))
    assert target == {"a": True, "b": True}
