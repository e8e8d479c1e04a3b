"""The Python front door refuses bad input in one ConfigError that names the argument, the value and what it
accepts, before any work (probe ids of issue 25 in brackets); inputs a user would expect to work (NumPy arrays,
float64 points on a float32 network) are converted, not refused."""
import numpy as np
import pytest
import torch

from models import MLP, MixtureScore, ScoreModel
from scoresde import Pipeline
from scoresde.data import DataSpec, GaussianMixture
from scoresde.pipeline import resolve_device
from sde import ConfigError, VPSDE
from solvers import DDIM, ODELikelihood

SDE = VPSDE()
MIX = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0.4, 0.4, 0.4], classes=[0, 1, 1])
QUICK = dict(method="rk4", steps=4, max_error=0)


@pytest.fixture
def oracle():
    return Pipeline(SDE, MixtureScore(SDE, MIX), MIX)


@pytest.fixture
def network():
    torch.manual_seed(0)
    return Pipeline(SDE, ScoreModel(MLP(shape=(2,), hidden=8, depth=1, embed_dim=8), SDE).eval(), DataSpec((2,)))


def refused(call, *needles):
    with pytest.raises(ConfigError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def test_points_of_the_wrong_shape_are_named_with_the_shape_the_model_takes(network, oracle):  # o11 o16 o28 o43
    for x in (torch.zeros(5, 3), torch.zeros(2), torch.zeros(5, 1, 8, 8)):
        refused(lambda: network.nll(x, **QUICK), f"x has shape {tuple(x.shape)}", "(N, 2)")
    refused(lambda: oracle.elbo(torch.zeros(5, 3), draws=4), "x has shape (5, 3)", "(N, 2)")
    refused(lambda: oracle.nll(torch.zeros(0, 2), **QUICK), "x holds no points")


def test_integer_meta_and_foreign_points_are_refused(network):  # o13 o15
    refused(lambda: network.nll(torch.zeros(5, 2, dtype=torch.int64), **QUICK), "dtype torch.int64", "floating")
    refused(lambda: network.nll(torch.zeros(5, 2, device="meta"), **QUICK), "meta device")
    refused(lambda: network.nll([[0.0, 1.0]], **QUICK), "x is a list", "tensor or a NumPy array")
    refused(lambda: network.nll(np.array([["a", "b"]]), **QUICK), "NumPy dtype")


def test_float64_and_numpy_points_are_scored_as_the_float32_tensor(network):  # o14 o18
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    base = network.nll(x, **QUICK)
    assert torch.equal(network.nll(x.double(), **QUICK), base)
    assert torch.equal(network.nll(x.numpy(), **QUICK), base)


def test_points_that_are_not_finite_or_overflow_are_named(oracle):  # o12 o35
    x = torch.zeros(5, 2)
    x[3, 1] = float("nan")
    refused(lambda: oracle.nll(x, **QUICK), "1 of 5 points that are not finite", "number 3")
    refused(lambda: oracle.nll(torch.full((5, 2), 1e30), **QUICK), "point 0 reaches 1e+30", "overflows float32")


def test_pixels_outside_the_data_range_are_refused():  # o47
    spec = DataSpec((1, 4, 4), levels=256, value_range=(-1, 1))
    pipe = Pipeline(SDE, lambda x, t: -x, spec)
    refused(lambda: pipe.nll(torch.full((2, 1, 4, 4), 5.0), **QUICK), "reaches [5, 5]", "range [-1, 1]")


def test_counts_seeds_and_flags_are_checked(oracle, tmp_path):  # o24 o36 o40 o45
    x = MIX.sample(4, torch.Generator().manual_seed(0))
    refused(lambda: oracle.nll(x, batch=0, **QUICK), "batch=0")
    refused(lambda: oracle.nll(x, batch=-3, **QUICK), "batch=-3")
    refused(lambda: oracle.sample(10, solver="ddim", seed=2**70), "seed=", "0..2**63-1")
    refused(lambda: oracle.sample(10, solver="ddim", seed=1.5), "seed=1.5")
    refused(lambda: oracle.sample(10, solver="ddim", progress="maybe"), "progress='maybe'", "True or False or 'auto'")
    refused(lambda: oracle.nll(x, dequantize="maybe", **QUICK), "dequantize='maybe'")
    refused(lambda: oracle.sample(0, solver="ddim"), "num=0")
    assert oracle.sample(3, solver="ddim", steps=2, seed=np.int64(3)).shape == (3, 2)


def test_solvers_and_their_options_are_named(oracle):  # o10 o38
    refused(lambda: oracle.sample(10, solver="dpm", bogus=3), "bogus=3", "solver='dpm'", "steps")
    refused(lambda: oracle.sample(10, solver=5), "solver=5 is not a solver", "ddim")
    refused(lambda: oracle.sample(10, solver="nope"), "solver='nope' is unknown")
    refused(lambda: oracle.sample(10, solver=DDIM(steps=3), steps=5), "steps=5", "built already")
    x = MIX.sample(4, torch.Generator().manual_seed(0))
    refused(lambda: oracle.nll(x, bogus=1), "bogus=1", "ODELikelihood", "rtol")
    refused(lambda: oracle.nll(x, likelihood=ODELikelihood(), steps=3), "steps=3", "likelihood=")
    refused(lambda: oracle.elbo(x, bogus=1), "bogus=1", "ELBO")


def test_an_impossible_num_is_refused_before_anything_is_allocated(oracle):  # o46
    refused(lambda: oracle.sample(10**12, solver="ddim"), "num=1000000000000", "GiB", "fit")


def test_labels_are_one_class_per_point_in_range(oracle, network):  # o33 o44
    x = MIX.sample(4, torch.Generator().manual_seed(0))
    refused(lambda: oracle.nll(x, labels=[0, 1], **QUICK), "2 labels for 4 points")
    refused(lambda: oracle.nll(x, labels=[0, 1, 2, 1], **QUICK), "class 2 is out of range", "0..1",
            "null class, for guidance only")
    refused(lambda: oracle.nll(x, labels=[0.0, 1.0, 1.0, 0.0], **QUICK), "integer classes")
    refused(lambda: oracle.nll(x, labels=["a", "b", "a", "b"], **QUICK), "integer classes")
    refused(lambda: network.nll(x, labels=[0, 1, 1, 0], **QUICK), "the model is unconditional")
    given = oracle.nll(x, labels=np.array([0, 1, 1, 0]), **QUICK)
    assert torch.equal(given, oracle.nll(x, labels=torch.tensor([0, 1, 1, 0]), **QUICK))


def test_devices_that_hold_no_values_are_refused(tmp_path):  # o22 s11
    refused(lambda: resolve_device("meta"), "device='meta'", "cpu")
    refused(lambda: resolve_device("nonsense"), "device='nonsense' is unknown")


def test_load_checks_its_flags_and_device_before_reading(tmp_path):  # o22 o36
    import scoresde

    refused(lambda: scoresde.load(tmp_path / "none", ema="maybe"), "ema='maybe'", "True or False")
    refused(lambda: scoresde.load(tmp_path / "none", device="meta"), "device='meta'")
