import torch

from fasterrcnn.data.transforms import ColorJitter, Compose, RandomHorizontalFlip, hflip_boxes, jittered_sizes, shift_hue, training_transforms


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


def solid_box_image():
    """A grey 40 x 60 image with a pure red box at x 10..30, y 5..25 (pixel edges: continuous xyxy)."""
    image = torch.full((3, 40, 60), 0.5)
    image[:, 5:25, 10:30] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return image, {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "labels": torch.tensor([1])}


def covers_the_colour(image, box, is_colour):
    """The box holds the pixels of the colour: all of it but a 1-pixel ring is the colour, none of the image
    farther than 1 pixel outside it is (resizing blends the edge pixels)."""
    x1, y1, x2, y2 = (round(v) for v in box.tolist())
    mask = is_colour(image)
    inside = torch.zeros_like(mask)
    inside[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
    return bool(mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].all()) and not bool((mask & ~inside).any())


def test_augmented_boxes_stay_on_their_pixels():
    from fasterrcnn.modeling.transform import GeneralizedRCNNTransform

    generator = torch.Generator().manual_seed(0)
    augment = Compose([RandomHorizontalFlip(1.0), ColorJitter(0.4, 0.4, 0.4, 0.05, generator=generator)])
    for _ in range(5):
        image, target = augment(*solid_box_image())
        assert torch.equal(target["boxes"], torch.tensor([[30.0, 5.0, 50.0, 25.0]]))  # the flip moved it, colour did not

        def reddish(im):
            return (im[0] > im[1] + 0.2) & (im[0] > im[2] + 0.2)

        assert covers_the_colour(image, target["boxes"][0], reddish)
        # scale jitter: the model's transform resizes the pixels and the boxes to the batch's jittered size
        min_size, max_size = jittered_sizes(40, 60, (0.5, 1.5), generator)
        transform = GeneralizedRCNNTransform(min_size, max_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        batch, targets = transform([image], [target])
        resized = batch.tensors[0, :, : batch.image_sizes[0][0], : batch.image_sizes[0][1]]
        assert abs(batch.image_sizes[0][0] - min_size) <= 1  # the short side (interpolate floors the size)
        assert covers_the_colour(resized, targets[0]["boxes"][0], reddish)


def test_jittered_sizes_and_colour_jitter_values():
    sizes = [jittered_sizes(600, 1000, (0.8, 1.2), torch.Generator().manual_seed(seed)) for seed in range(50)]
    assert all(480 <= low <= 720 and abs(high / low - 1000 / 600) < 0.01 for low, high in sizes) and len(set(sizes)) > 10
    assert jittered_sizes(600, 1000, (1.0, 1.0), torch.Generator()) == (600, 1000)
    image = torch.rand(3, 4, 5)
    assert torch.allclose(shift_hue(image, 0.0), image, atol=1e-6) and torch.allclose(shift_hue(image, 1.0), image, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 2, 2)
    assert torch.allclose(shift_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 2, 2), atol=1e-6)  # red -> green
    same, _ = ColorJitter()(image, {})  # all strengths 0: unchanged
    assert torch.equal(same, image)
    assert training_transforms(0.0, None) is None and isinstance(training_transforms(0.5, None), RandomHorizontalFlip)
    assert isinstance(training_transforms(0.5, (0.1, 0.1, 0.1, 0.0)), Compose)
