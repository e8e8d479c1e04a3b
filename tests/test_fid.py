"""FID and KID: the Fréchet distance against its closed forms, KID's estimator unbiased against the exact MMD² of
two Gaussians, the pipeline end to end (8-bit rounding, reference cache, run.py) with a stand-in feature network,
and the one-line errors. Nothing here needs torch-fidelity or downloads anything."""
import json
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from scoresde.evaluation import FID, InceptionFeatures, frechet_distance, kid
from scoresde.evaluation.fid import Moments, polynomial_mmd2, to_uint8
from scoresde.data import DataSpec, Digits, ImageData
from sde.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class StandIn:
    """A fixed random convolutional net standing in for Inception: uint8 (N, C, H, W) → 24 features (the channel
    means of two tanh convolutions and the mean squares of the second), counting the images it has seen (and
    appending each count to the file ``log``)."""

    def __init__(self, weights=None, device="cpu", seed=0, log=None):
        self.seed, self.log, self.seen = seed, log, 0
        self.name = f"stand-in-{seed}"

    def __call__(self, images):
        assert images.dtype == torch.uint8 and images.ndim == 4
        gen = torch.Generator().manual_seed(self.seed)
        w1 = torch.randn(8, images.shape[1], 3, 3, generator=gen) / 3
        w2 = torch.randn(8, 8, 3, 3, generator=gen) / 8
        h1 = torch.tanh(torch.nn.functional.conv2d(images.double() / 127.5 - 1, w1.double(), padding=1))
        h2 = torch.tanh(torch.nn.functional.conv2d(h1, w2.double(), padding=1))
        self.seen += len(images)
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{len(images)}\n")
        return torch.cat([h1.mean((2, 3)), h2.mean((2, 3)), h2.pow(2).mean((2, 3))], 1).float()


def random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


# --- the Fréchet distance ---------------------------------------------------------------------------------------

def test_frechet_distance_in_one_dimension():
    """N(μ₁, σ₁²) to N(μ₂, σ₂²): (μ₁ − μ₂)² + (σ₁ − σ₂)²."""
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5 ** 2 + 1.5 ** 2, rel=1e-12)


def test_frechet_distance_of_commuting_covariances():
    """Diagonal covariances: |Δμ|² + Σᵢ (√aᵢ − √bᵢ)²."""
    a, b = np.array([0.5, 2.0, 9.0, 1e-3]), np.array([4.0, 2.0, 1.0, 1e-1])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-12)


def test_frechet_distance_of_non_commuting_covariances():
    """2 × 2: tr √M = √(tr M + 2 √det M) for M = C₁C₂ (its eigenvalues are real and positive), so
    d² = tr C₁ + tr C₂ − 2 √(tr M + 2 √det M); in 30-D against scipy's sqrtm, both argument orders."""
    c1, c2 = np.array([[2.0, 0.3], [0.3, 0.5]]), np.array([[1.0, -0.7], [-0.7, 1.5]])
    assert not np.allclose(c1 @ c2, c2 @ c1)
    m = c1 @ c2
    exact = np.trace(c1) + np.trace(c2) - 2 * np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    assert frechet_distance([0, 0], c1, [0, 0], c2) == pytest.approx(exact, rel=1e-12)

    rng = np.random.default_rng(0)
    c1, c2 = random_cov(rng, 30), random_cov(rng, 30)
    mu1, mu2 = rng.standard_normal(30), rng.standard_normal(30)
    exact = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(exact, rel=1e-9)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(exact, rel=1e-9)


def test_frechet_distance_of_singular_covariances_and_of_one_gaussian():
    """Rank-deficient covariances (fewer points than features) need no regularisation: diag(1, 0) to diag(0, 1)
    is 2; a rank-5 covariance in 40-D against itself is 0, and against a full-rank one its scipy value."""
    assert frechet_distance([0, 0], np.diag([1.0, 0.0]), [0, 0], np.diag([0.0, 1.0])) == pytest.approx(2.0, abs=1e-12)
    rng = np.random.default_rng(1)
    low, full, mu = random_cov(rng, 40, rank=5), random_cov(rng, 40), rng.standard_normal(40)
    assert frechet_distance(mu, low, mu, low) == pytest.approx(0.0, abs=1e-10)
    exact = np.trace(low + full) - 2 * np.trace(scipy.linalg.sqrtm(full @ low)).real
    assert frechet_distance(mu, low, mu, full) == pytest.approx(exact, rel=1e-7)


def test_frechet_distance_from_many_draws():
    """The mean and covariance of 200000 draws of each of two 3-D Gaussians (Moments, in batches) give the exact
    distance to within its sampling error, and Moments agrees with numpy's mean and covariance."""
    rng = np.random.default_rng(2)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.5, 0.0])
    c1, c2 = random_cov(rng, 3), random_cov(rng, 3) + 0.5 * np.eye(3)
    exact = frechet_distance(mu1, c1, mu2, c2)
    stats = []
    for mu, c in ((mu1, c1), (mu2, c2)):
        x = rng.multivariate_normal(mu + 100.0, c, size=200_000)  # a large common offset: the shifted sums hold
        moments = Moments()
        for part in np.array_split(x, 7):
            moments.add(torch.from_numpy(part))
        mean, cov = moments.result()
        assert np.allclose(mean, x.mean(0), rtol=0, atol=1e-10)
        assert np.allclose(cov, np.cov(x, rowvar=False), rtol=0, atol=1e-9)
        stats += [mean, cov]
    assert exact > 0.5
    assert frechet_distance(*stats) == pytest.approx(exact, abs=0.02)


# --- KID -------------------------------------------------------------------------------------------------------

def test_polynomial_mmd2_against_a_double_loop():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((7, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / (5 * 7)
    assert polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def exact_mmd2(c1, c2):
    """MMD² of N(0, C₁) and N(0, C₂) under k(a, b) = (a·b / F + 1)³: odd moments vanish, E (a·b)² = tr(C_a C_b),
    so E k = 1 + 3 tr(C_a C_b) / F² and MMD² = 3 ‖C₁ − C₂‖²_F / F²."""
    return 3 * ((c1 - c2) ** 2).sum() / len(c1) ** 2


@pytest.mark.parametrize("same", [True, False])
def test_kid_estimate_is_unbiased(same):
    """The mean of 400 independent estimates on 60 points per set is the exact MMD² (0 for one distribution)
    within 4 standard errors; the biased estimate (diagonals kept) misses it by far more."""
    rng = np.random.default_rng(4)
    dim, m = 6, 60
    c1 = random_cov(rng, dim)
    c2 = c1 if same else c1 + np.diag(rng.uniform(1.0, 2.0, dim))
    r1, r2 = np.linalg.cholesky(c1), np.linalg.cholesky(c2)
    unbiased, biased = [], []
    for _ in range(400):
        x, y = rng.standard_normal((m, dim)) @ r1.T, rng.standard_normal((m, dim)) @ r2.T
        unbiased.append(polynomial_mmd2(x, y))
        kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    exact = exact_mmd2(c1, c2)
    stderr = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased) - exact) < 4 * stderr
    assert abs(np.mean(biased) - exact) > 10 * stderr
    if not same:
        assert exact > 10 * stderr


def test_kid_over_subsets():
    """kid(): two samples of one distribution give a mean within 3 standard errors of 0; two different ones the
    exact MMD² to within 3 standard errors, many standard errors above 0 (subsets of 100 from 4000 points)."""
    rng = np.random.default_rng(5)
    dim = 6
    c1 = random_cov(rng, dim)
    c2 = c1 + 0.6 * np.eye(dim)
    draw = lambda c, n: torch.from_numpy(rng.multivariate_normal(np.zeros(dim), c, size=n))  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    mean, std = kid(draw(c1, 4000), draw(c1, 4000), subsets=200, subset_size=100, generator=gen)
    assert std > 0 and abs(mean) < 3 * std / np.sqrt(200)
    mean, std = kid(draw(c1, 4000), draw(c2, 4000), subsets=200, subset_size=100, generator=gen)
    exact = exact_mmd2(c1, c2)
    assert abs(mean - exact) < 3 * std / np.sqrt(200) and exact > 20 * std / np.sqrt(200)


# --- 8-bit rounding and the pipeline ------------------------------------------------------------------------------

def test_samples_round_to_the_data_levels():
    """Decoded 8-bit images round back to their stored bytes; a value anywhere in a bin rounds to that bin; values
    beyond the range go to the end bins; 16 levels spread over 0..255."""
    data = Digits()
    rows = data.train_index[:50]
    assert torch.equal(to_uint8(data.points(rows), data), torch.from_numpy(data.store[rows]))
    k = torch.arange(256)
    centres = (k + 0.5) / 128 - 1
    for offset in (-0.49, 0.0, 0.49):
        assert torch.equal(to_uint8((centres + offset / 128).float(), data).long(), k)
    assert to_uint8(torch.tensor([-3.0, 3.0, float("nan")]), data).tolist() == [0, 255, 0]
    sixteen = DataSpec((1, 2, 2), levels=16, value_range=(0.0, 1.0))
    assert to_uint8(torch.tensor([0.01, 0.07, 0.5, 0.99]), sixteen).tolist() == [0, 17, 136, 255]


def test_fid_pipeline_with_a_stand_in_network(tmp_path):
    """Digits through the stand-in: the FID equals the Fréchet distance of the features computed directly; the
    training images score 0, held-out digits little, noise much; the reference is cached (a second evaluator
    reads the file and sees no training image) and keyed by the images and the network."""
    data, net = Digits(), StandIn()
    fid = FID(data, net, cache=tmp_path, batch=256)
    train = data.train_x.float()
    direct = net(torch.from_numpy(data.store[data.train_index])).double().numpy()
    seen = net.seen
    held_out = data.test_x.float()
    scores = fid(held_out.split(50))
    assert net.seen == 2 * seen + len(held_out) and scores["fid_num"] == len(held_out)
    assert set(scores) == {"fid", "kid", "kid_std", "fid_num"}
    f = net(to_uint8(held_out, data)).double().numpy()
    assert scores["fid"] == pytest.approx(frechet_distance(direct.mean(0), np.cov(direct, rowvar=False), f.mean(0),
                                                           np.cov(f, rowvar=False)), rel=1e-9)
    assert fid(held_out) == pytest.approx(scores)
    assert fid(train)["fid"] == pytest.approx(0.0, abs=1e-9)
    noise = torch.rand(len(held_out), *data.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = fid(noise)
    assert bad["fid"] > 20 * scores["fid"] and bad["kid"] > 20 * abs(scores["kid"])
    assert scores["kid_std"] > 0

    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again = StandIn()
    cached = FID(data, again, cache=tmp_path, batch=256)
    assert cached(held_out) == pytest.approx(scores)
    assert again.seen == len(held_out)
    np.testing.assert_array_equal(cached.reference().cov, fid.reference().cov)

    FID(data, StandIn(seed=1), cache=tmp_path).reference()
    pixels = data.store.copy()
    FID(ImageData(pixels), StandIn(), cache=tmp_path).reference()
    pixels[data.train_index[0], 0, 0, 0] ^= 1
    FID(ImageData(pixels), StandIn(), cache=tmp_path).reference()
    assert len(list(tmp_path.iterdir())) == 4


def test_a_stale_or_broken_cache_file_is_recomputed(tmp_path):
    data = ImageData(np.random.default_rng(0).integers(0, 256, (60, 3, 4, 4)), test_fraction=0.2)
    first = FID(data, StandIn(), cache=tmp_path, kid_reference=20)
    ref = first.reference()
    assert len(ref.kid_features) == 20 and ref.num == 48
    ref.path.write_bytes(b"broken")
    net = StandIn()
    assert np.allclose(FID(data, net, cache=tmp_path, kid_reference=20).reference().mean, ref.mean)
    assert net.seen == 48 and [p.name for p in tmp_path.iterdir()] == [ref.path.name]
    with pytest.raises(ConfigError, match="cannot hold the reference statistics"):
        FID(data, StandIn(), cache=ref.path / "below_a_file").reference()


def test_fid_refuses_data_that_are_not_8_bit_images():
    from scoresde.data import Checkerboard

    with pytest.raises(ConfigError, match="FID needs 8-bit images"):
        FID(Checkerboard(), StandIn())


# --- InceptionFeatures, with a fake torch-fidelity ---------------------------------------------------------------

URL = "https://example.org/releases/weights-inception-2015-12-05-6726825d.pth"


@pytest.fixture
def fake_fidelity(monkeypatch, tmp_path):
    """torch_fidelity replaced by a module whose extractor records its weight file and inputs (and cannot
    download); torch.hub's folder moved into tmp_path."""
    calls = []

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            assert feature_extractor_weights_path is not None, "would download"
            calls.append(("init", name, features_list, feature_extractor_weights_path))

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            calls.append(("forward", tuple(x.shape)))
            return (x.double().mean((2, 3)).repeat(1, 683)[:, :2048].float(),)

    package = types.ModuleType("torch_fidelity")
    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.URL_INCEPTION_V3, module.FeatureExtractorInceptionV3 = URL, FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return calls, tmp_path / "hub" / "checkpoints" / URL.rsplit("/", 1)[-1]


def test_inception_features_use_the_cached_weights_gray_to_rgb_in_batches(fake_fidelity):
    calls, cached = fake_fidelity
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    net = InceptionFeatures(batch=3)
    assert calls == [("init", "inception-v3-compat", ["2048"], str(cached))]
    f = net(torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8))
    assert f.shape == (7, 2048)
    assert [c[1] for c in calls[1:]] == [(3, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)]
    assert net.name.endswith(cached.name)
    with pytest.raises(ConfigError, match="uint8 images"):
        net(torch.zeros(2, 3, 8, 8))


def test_inception_weights_given_by_path(fake_fidelity, tmp_path):
    calls, _ = fake_fidelity
    path = tmp_path / "my.pth"
    path.write_bytes(b"weights")
    InceptionFeatures(weights=str(path))
    assert calls[0][3] == str(path)


def one_line(error):
    text = str(error.value)
    assert "\n" not in text
    return text


def test_missing_weights_say_how_to_provide_them(fake_fidelity, tmp_path):
    _, cached = fake_fidelity
    with pytest.raises(ConfigError) as e:
        InceptionFeatures()
    text = one_line(e)
    assert str(cached) in text and URL in text and "weights=PATH" in text
    with pytest.raises(ConfigError) as e:
        InceptionFeatures(weights=str(tmp_path / "nowhere.pth"))
    text = one_line(e)
    assert "weights=" in text and "nowhere.pth" in text and URL in text


def test_missing_torch_fidelity_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ConfigError) as e:
        InceptionFeatures()
    assert 'pip install -e ".[fid]"' in one_line(e)


# --- the trainer's evaluation hook -------------------------------------------------------------------------------

def test_the_trainer_calls_on_eval_every_eval_every_steps_without_changing_the_run(tmp_path):
    """on_eval(step, ema_model) at multiples of eval_every, with the EMA model in eval mode, random draws inside
    it leave the trained weights as they are without it; a negative period is refused."""
    from test_long_training import CPU, small_model, trainer

    from helpers import ALL_SDES, mixture_2d
    from scoresde.training import DSMLoss

    sde, calls = ALL_SDES["vp"](), []

    def on_eval(step, ema_model):
        calls.append((step, ema_model.training))
        torch.randn(1000)

    plain, _ = trainer(steps=10).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "a", CPU)
    scored, _ = trainer(steps=10).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "b", CPU,
                                      on_eval=on_eval, eval_every=3)
    assert calls == [(3, False), (6, False), (9, False)]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), scored.state_dict().values()))
    with pytest.raises(ConfigError, match="eval_every=-1"):
        trainer(steps=2).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "c", CPU, on_eval=on_eval,
                             eval_every=-1)


# --- run.py ------------------------------------------------------------------------------------------------------

def run(out, *overrides):
    """run.py in this process (run_main)."""
    from test_run import run_main

    return run_main(out, *overrides)


TINY_UNET = ["data=digits", "model=unet", "model.net.channels=16", "model.net.multipliers=[1,2]",
             "model.net.attention_resolutions=[4]", "model.net.num_res_blocks=1", "train.batch_size=8",
             "train.progress=false", "sample.max_range=0", "solver=ddim", "solver.steps=3", "sample.num=8"]


@pytest.mark.slow
def test_run_with_fid_during_and_after_training(tmp_path):
    """run.py +eval=fid with the stand-in: fid, kid, kid_std, fid_num in metrics.json, fid_log.csv at
    eval.fid.every steps and the end (the end's FID is the last logged one), the reference computed once across
    two runs; precision, recall, density and coverage in the same features."""
    log = tmp_path / "seen.txt"
    args = [*TINY_UNET, "+eval=fid", "eval.fid.num=40", f"eval.fid.cache={tmp_path / 'cache'}",
            "eval.fid.features._target_=test_fid.StandIn", f"+eval.fid.features.log={log}"]
    proc = run(tmp_path / "a", *args, "train.steps=4", "eval.fid.every=2")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["fid_num"] == 40 and metrics["fid"] > 0 and metrics["kid_std"] > 0 and "kid" in metrics
    assert metrics["prdc_num"] == 40 and all(0 <= metrics[k] <= 1 for k in ("precision", "recall", "coverage"))
    rows = (tmp_path / "a" / "fid_log.csv").read_text().splitlines()
    assert rows[0] == "step,fid,kid,precision,recall,density,coverage"
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert float(rows[-1].split(",")[4]) == pytest.approx(metrics["recall"], rel=1e-5)
    assert float(rows[-1].split(",")[1]) == pytest.approx(metrics["fid"], rel=1e-5)
    assert sum(int(n) for n in log.read_text().split()) == 1617 + 2 * 40
    proc = run(tmp_path / "b", *args, "train.steps=2")
    assert proc.returncode == 0, proc.stderr
    assert sum(int(n) for n in log.read_text().split()) == 1617 + 3 * 40
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_run_refuses_fid_on_data_that_are_not_images(tmp_path):
    proc = run(tmp_path, "+eval=fid", "train.steps=5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: eval=[fid] needs 8-bit images (FID compares them through an image network); "
        "Checkerboard() holds continuous points of shape (2,)"]
    assert not (tmp_path / "train_log.csv").exists()


@pytest.mark.slow
def test_run_names_missing_inception_weights(tmp_path, monkeypatch):
    """With a (fake) torch-fidelity and no weight file: one line naming the key and the download, before training."""
    package = tmp_path / "fake" / "torch_fidelity"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "feature_extractor_inceptionv3.py").write_text(textwrap.dedent(f"""
        URL_INCEPTION_V3 = {URL!r}

        class FeatureExtractorInceptionV3:
            def __init__(self, *args, **kwargs):
                raise AssertionError("not to be reached")
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    fidelity = [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]
    for name in fidelity:
        monkeypatch.delitem(sys.modules, name)  # restored afterwards
    try:
        proc = run(tmp_path / "out", *TINY_UNET, "+eval=fid", "eval.fid.features.weights=/nowhere/inception.pth")
    finally:
        for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
            if name not in fidelity:
                del sys.modules[name]  # the stand-in, loaded by this test alone
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "eval.fid.features.weights='/nowhere/inception.pth' is not a file" in lines[0]
    assert URL in lines[0]
    assert not (tmp_path / "out" / "train_log.csv").exists()


@pytest.mark.slow
def test_the_fid_protocol_scores_independent_sample_sets_against_the_whole_training_split(tmp_path):
    """task=fid_protocol on a tiny trained U-Net with the stand-in: each set's FID is the FID of that many
    samples drawn with its own seed, the mean and the minimum are theirs, the reference is the whole training
    split, and the table names the solver, its NFE and the counts."""
    from scoresde import load
    from scoresde.seeds import Seeds

    proc = run(tmp_path / "a", *TINY_UNET, "train.steps=2")
    assert proc.returncode == 0, proc.stderr
    args = [*TINY_UNET, f"ckpt={tmp_path / 'a' / 'checkpoint.pt'}", "train.steps=0", "task=fid_protocol",
            "task.num=24", "task.seeds=2", f"task.cache={tmp_path / 'cache'}", "task.k=2", "task.k_density=2",
            "task.use=[fid]",
            "task.features.fid._target_=test_fid.StandIn", "sample.batch=10",
            "eval=[]"]
    proc = run(tmp_path / "b", *args)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    summary = json.loads((tmp_path / "b" / "fid_protocol.json").read_text())
    fids = [row["fid"] for row in summary["sets"]]
    assert metrics["fid_seeds"] == fids and metrics["fid_min"] == min(fids) and len(set(fids)) == 2
    assert metrics["fid_mean"] == pytest.approx(sum(fids) / 2) and metrics["nfe_sample"] == 3
    assert summary["reference"] == {"fid": len(Digits().train_index)} and summary["num"] == 24
    pipe = load(tmp_path / "a")
    base = Seeds(0)["protocol"]
    assert [row["seed"] for row in summary["sets"]] == [base, base + 1]
    fid = FID(Digits(), StandIn(), cache=tmp_path / "cache", prdc=True, k=2, k_density=2)
    solver = solvers_ddim(3)
    gen = torch.Generator().manual_seed(base + 1)
    x = torch.cat([pipe.sample(n, solver, batch=10, generator=gen) for n in (10, 10, 4)])
    assert fid(x)["fid"] == pytest.approx(fids[1], rel=1e-6)
    table = (tmp_path / "b" / "fid_protocol.md").read_text()
    assert "DDIM" in table and "3 network evaluations per sample; 24 samples per set, 2 sets" in table
    assert table.count("\n| ") == 5 and "| min |" in table and "| mean |" in table


def solvers_ddim(steps):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "solver" / "ddim.yaml"), {"steps": steps}))
