import numpy as np
import pytest
import torch

from cvae_mnist.core.metrics import (
    PSNR_CAP_DB,
    mse_per_image,
    nearest_distances,
    psnr_per_image,
    ssim_per_image,
)


@pytest.fixture
def images():
    return np.random.default_rng(0).random((3, 28, 28))


def test_identical_images_have_ssim_one_and_capped_psnr(images):
    np.testing.assert_allclose(ssim_per_image(images, images), 1.0)
    assert psnr_per_image(images, images).tolist() == [PSNR_CAP_DB] * 3
    assert mse_per_image(images, images).tolist() == [0.0] * 3


def test_known_error_gives_known_mse_and_psnr(images):
    shifted = images.copy()
    shifted[0] += 0.1  # squared error 0.01 per pixel -> PSNR = 10 log10(1 / 0.01) = 20 dB
    assert mse_per_image(images, shifted)[0] == pytest.approx(784 * 0.01)
    assert psnr_per_image(images, shifted)[0] == pytest.approx(20.0)


def test_unrelated_images_score_low_ssim(images):
    other = np.random.default_rng(1).random((3, 28, 28))
    assert ssim_per_image(images, other).max() < 0.2


def test_nearest_distances_find_each_images_closest_reference_in_every_chunk():
    reference = torch.zeros(5, 1, 2, 2)
    reference[:, 0, 0, 0] = torch.arange(5.0)  # images 0..4 differ in one pixel
    images = reference[[4, 1, 3]].clone()
    images[:, 0, 1, 1] = torch.tensor([0.0, 0.25, 3.0])  # moved off them along another pixel
    torch.testing.assert_close(nearest_distances(images, reference, chunk=2), torch.tensor([0.0, 0.25, 3.0]))
