"""Data sets: toy generators, arrays, image folders, digits, and the messages for bad input."""
import math

import numpy as np
import pytest
import torch

from scoresde.data.files import ArrayFile, Digits, ImageFolder, eight_bit_to_unit
from scoresde.data.toys import Checkerboard, EightGaussians, Moons, Rings, SwissRoll

TOYS = [Checkerboard, SwissRoll, Moons, Rings, EightGaussians]


@pytest.mark.parametrize("make", TOYS)
def test_toys_are_2d_seeded_and_finite(make):
    data = make()
    a = data.sample(1000, torch.Generator().manual_seed(0))
    b = data.sample(1000, torch.Generator().manual_seed(0))
    assert a.shape == (1000, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert data.shape == (2,) and data.levels is None
    assert 0.3 < a.std().item() < 3


def test_checkerboard_density():
    data = Checkerboard()
    x = data.sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (data.log_prob(x) == -math.log(8)).all()
    cells = (torch.floor(x + 2)).long()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).double()
    assert (counts > 0).sum() == 8
    assert (counts[counts > 0] / 20000 - 1 / 8).abs().max() < 0.01
    assert data.log_prob(torch.tensor([[0.5, -0.5]])).item() == -math.inf


def test_rings_radii_in_proportion():
    x = Rings(noise=0.0).sample(40000, torch.Generator().manual_seed(0), dtype=torch.float64)
    r = x.norm(dim=1)
    for radius, share in zip([0.5, 1.0, 1.5, 2.0], [0.1, 0.2, 0.3, 0.4]):
        assert ((r - radius).abs() < 1e-9).double().mean().item() == pytest.approx(share, abs=0.01)


def test_array_file_vectors_and_split(tmp_path):
    arr = np.random.default_rng(0).normal(size=(200, 3))
    np.save(tmp_path / "x.npy", arr)
    data = ArrayFile(tmp_path / "x.npy", test_fraction=0.25)
    assert data.shape == (3,) and data.levels is None
    assert len(data.test_x) == 50 and len(data.train_x) == 150
    train = {tuple(r) for r in data.train_x.numpy().round(12)}
    assert not any(tuple(r) in train for r in data.test_x.numpy().round(12))
    assert data.sample(10, torch.Generator().manual_seed(0)).shape == (10, 3)
    assert torch.allclose(data.test(50, dtype=torch.float64), data.test_x)


def test_array_file_uint8_images_are_scaled(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=imgs)
    data = ArrayFile(tmp_path / "imgs.npz")
    assert data.shape == (1, 4, 4) and data.levels == 256 and data.value_range == (-1.0, 1.0)
    assert data.train_x.min() >= -1 and data.train_x.max() <= 1
    assert eight_bit_to_unit(0).item() == pytest.approx(-1 + 1 / 256)
    assert eight_bit_to_unit(255).item() == pytest.approx(1 - 1 / 256)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (np.zeros((0, 3)), "is empty"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "contains NaN or inf \\(first in sample 0\\)"),
    (np.zeros(5), "has shape \\(5,\\): expected \\(N, D\\) or \\(N, C, H, W\\)"),
    (np.zeros((4, 2, 2)), "has shape \\(4, 2, 2\\)"),
])
def test_bad_array_files(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if content is not None:
        np.save(path, content)
    with pytest.raises(ValueError, match=message):
        ArrayFile(path)


def test_npz_key(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.ones((6, 2)))
    assert len(ArrayFile(tmp_path / "two.npz", key="b").train_x) + 1 == 6
    with pytest.raises(ValueError, match="key='c' is not in two.npz: it holds a, b"):
        ArrayFile(tmp_path / "two.npz", key="c")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, size=(10, 10), dtype=np.uint8)).save(tmp_path / "grey.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path, size=8, channels=3, test_fraction=0.3)
    assert data.shape == (3, 8, 8) and len(data.train_x) + len(data.test_x) == 7
    assert data.levels == 256
    grey = ImageFolder(tmp_path, size=16, channels=1)
    assert grey.shape == (1, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no PNG or JPEG images"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png' cannot be read"):
        ImageFolder(tmp_path)


def test_digits_bundled_and_split():
    data = Digits()
    assert data.shape == (1, 8, 8)
    assert len(data.train_x) + len(data.test_x) == 1797
    assert data.levels == 256 and data.value_range == (-1.0, 1.0)
    assert -1 < data.train_x.min() < -0.99 and 0.99 < data.train_x.max() < 1
    with pytest.raises(ValueError, match="num=1000 exceeds the 180 held-out points"):
        data.test(1000)
