"""The one base class every data set shares: shapes, draws, held-out points, labels, descriptions."""
import numpy as np
import pytest
import torch

import scoresde.data
from scoresde.data import ArrayFile, Checkerboard, DataSet, DataSpec, Digits, EightGaussians, GaussianMixture
from sde import ConfigError

SETS = {
    "gmm": lambda: GaussianMixture([[0.0, 0.0], [3.0, 3.0]], [0.5, 0.2], [1, 3]),
    "random": lambda: scoresde.data.RandomMixture(components=3, dim=5),
    "eight": EightGaussians,
    "checkerboard": Checkerboard,
    "moons": scoresde.data.Moons,
    "rings": scoresde.data.Rings,
    "swissroll": scoresde.data.SwissRoll,
    "digits": Digits,
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_data_set_keeps_the_contract(name):
    data = SETS[name]()
    assert isinstance(data, DataSet)
    x = data.sample(7, torch.Generator().manual_seed(0))
    assert x.shape == (7, *data.shape) and x.dtype == torch.float32 and data.dim == int(np.prod(data.shape))
    again = data.sample(7, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(again.float(), x)
    assert data.test(3, torch.Generator().manual_seed(1)).shape == (3, *data.shape)
    spec = DataSpec(**data.spec())
    assert (spec.shape, spec.num_classes, spec.levels, spec.value_range) == \
        (data.shape, data.num_classes, data.levels, data.value_range)
    if data.num_classes is None:
        with pytest.raises(ConfigError, match="has no labels"):
            data.sample(3, labels=True)
    else:
        x, y = data.sample(500, torch.Generator().manual_seed(2), labels=True)
        assert y.shape == (500,) and y.dtype == torch.long and 0 <= y.min() and y.max() < data.num_classes


def test_mixture_labels_are_the_components():
    mix = SETS["gmm"]()
    x, y = mix.sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64, labels=True)
    assert torch.equal(mix.assign(x), y) or (mix.assign(x) == y).double().mean() > 0.999
    assert (y == 1).double().mean().item() == pytest.approx(0.75, abs=0.01)


def test_digits_labels_match_the_images():
    data = Digits()
    x, y = data.test(data.test_size, labels=True)
    assert data.num_classes == 10 and len(y) == data.test_size == 180
    from sklearn.datasets import load_digits

    ref = load_digits()
    pixels = np.round(ref.images * 255 / 16)
    k = np.round((x[:, 0].numpy() + 1) * 128 - 0.5)
    for image, label in zip(k[:20], y[:20]):
        match = np.flatnonzero((pixels == image).all((1, 2)))
        assert label.item() in ref.target[match]


def test_array_labels_and_their_errors(tmp_path):
    np.savez(tmp_path / "xy.npz", x=np.random.default_rng(0).normal(size=(50, 3)), y=np.arange(50) % 4)
    data = ArrayFile(tmp_path / "xy.npz", labels="y")
    assert data.num_classes == 4
    x, y = data.sample(10, torch.Generator().manual_seed(0), labels=True)
    assert x.shape == (10, 3) and y.max() < 4
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3)), y=np.zeros(4, dtype=int))
    with pytest.raises(ConfigError, match="expected 5 integer labels"):
        ArrayFile(tmp_path / "bad.npz", labels="y")
    with pytest.raises(ConfigError, match="labels='z' is not in xy.npz"):
        ArrayFile(tmp_path / "xy.npz", labels="z")


def test_held_out_points_are_limited_and_a_spec_holds_none():
    data = Digits()
    with pytest.raises(ConfigError, match="num=181 exceeds the 180 held-out points"):
        data.test(181)
    with pytest.raises(ConfigError, match="num=0 is invalid"):
        data.sample(0)
    with pytest.raises(NotImplementedError):
        DataSpec((2,)).sample(3)
    assert not DataSpec((2,)).has_log_prob and Checkerboard().has_log_prob and SETS["gmm"]().has_log_prob
