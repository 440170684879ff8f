import pytest
import torch

from cvae_mnist.core.augmentation import random_affine


def _dot(size: int = 28, row: int = 14, column: int = 14) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    image[0, 0, row, column] = 1.0
    return image


def test_no_rotation_and_no_shift_returns_the_images_untouched():
    images = torch.rand(4, 1, 28, 28)
    assert random_affine(images, 0, 0, torch.Generator().manual_seed(0)) is images


def test_a_shift_moves_a_dot_by_at_most_the_shift():
    generator = torch.Generator().manual_seed(0)
    moved = [random_affine(_dot(), 0, 3, generator) for _ in range(50)]
    offsets = []
    for image in moved:
        # the centre of mass of the (bilinearly spread) dot
        weights = image[0, 0] / image.sum()
        rows, columns = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        offsets.append(((weights * rows).sum() - 14, (weights * columns).sum() - 14))
    offsets = torch.tensor(offsets)
    assert offsets.abs().max() <= 3 + 1e-4
    assert offsets.abs().max() > 1.5  # it does move
    torch.testing.assert_close(torch.stack([m.sum() for m in moved]), torch.ones(50))  # mass kept inside


def test_a_rotation_about_the_centre_keeps_the_distance_to_the_centre():
    image = _dot(row=14, column=22)  # 8 pixels right of the centre (13.5, 13.5) + 0.5
    rotated = random_affine(image.expand(20, 1, 28, 28), 40, 0, torch.Generator().manual_seed(1))
    rows, columns = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    radius = []
    for one in rotated:
        weights = one[0] / one.sum()
        radius.append(((weights * rows).sum() - 13.5) ** 2 + ((weights * columns).sum() - 13.5) ** 2)
    expected = 0.5**2 + 8.5**2
    assert torch.tensor(radius).sqrt().sub(expected**0.5).abs().max() < 0.3
    assert not torch.equal(rotated[0], rotated[1])  # each image gets its own angle


def test_the_same_generator_state_gives_the_same_images():
    images = torch.rand(8, 1, 28, 28)
    first = random_affine(images, 10, 2, torch.Generator().manual_seed(3))
    assert torch.equal(first, random_affine(images, 10, 2, torch.Generator().manual_seed(3)))
    assert first.shape == images.shape
    assert first.min() >= 0 and first.max() <= 1


@pytest.mark.parametrize("rotation, shift", [(10, 0), (0, 2)])
def test_each_kind_of_augmentation_alone_changes_the_images(rotation, shift):
    images = torch.rand(8, 1, 28, 28)
    assert not torch.allclose(
        random_affine(images, rotation, shift, torch.Generator().manual_seed(0)), images
    )
