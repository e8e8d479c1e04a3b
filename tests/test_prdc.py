"""Precision, recall, density and coverage against a plain double loop and against exact answers on Gaussian
mixtures (a dropped component lowers recall and coverage by its weight; widened components lower precision and
density; identical laws give density 1 and coverage 1 − Π (N − i)/(N + M − i) in expectation, in any
dimension); FD-DINOv2's feature path (torch-fidelity's preprocessing, a local torch.hub copy, no download),
the pixels as features, the renamed metrics, and task=fid_protocol."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.data import Digits, GaussianMixture, ImageData, RandomMixture
from scoresde.evaluation import FID, DINOv2Features, PixelFeatures, frechet_distance, prdc
from scoresde.evaluation.features import resize_like_tensorflow1
from scoresde.tasks.fid import log_fid, renamed
from sde.errors import ConfigError

MEANS = [[4.0, 0.0], [2.83, 2.83], [0.0, 4.0], [-2.83, 2.83], [-4.0, 0.0], [-2.83, -2.83], [0.0, -4.0], [2.83, -2.83]]
STDS = [0.3, 0.4, 0.5, 0.3, 0.4, 0.5, 0.3, 0.4]
WEIGHTS = [1, 2, 3, 4, 5, 6, 7, 8]


def double_loop(real, fake, k, k_density):
    """The definitions written out point by point."""
    def radius(rows, i, kk):
        return sorted(math.dist(rows[i], rows[j]) for j in range(len(rows)) if j != i)[kk - 1]

    rr = [radius(real, i, k) for i in range(len(real))]
    ff = [radius(fake, j, k) for j in range(len(fake))]
    rd = [radius(real, i, k_density) for i in range(len(real))]
    inside = [[math.dist(f, r) <= rr[i] for i, r in enumerate(real)] for f in fake]
    precision = sum(any(row) for row in inside) / len(fake)
    recall = sum(any(math.dist(r, f) <= ff[j] for j, f in enumerate(fake)) for r in real) / len(real)
    balls = [[math.dist(f, r) <= rd[i] for i, r in enumerate(real)] for f in fake]
    density = sum(map(sum, balls)) / (k_density * len(fake))
    coverage = sum(any(balls[j][i] for j in range(len(fake))) for i in range(len(real))) / len(real)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k,k_density", [(3, 5), (1, 1), (4, 2)])
def test_prdc_equals_its_definition_point_by_point(k, k_density):
    gen = torch.Generator().manual_seed(k)
    real = torch.randn(23, 3, generator=gen, dtype=torch.float64)
    fake = torch.randn(31, 3, generator=gen, dtype=torch.float64) * 1.3 + 0.4
    ours = prdc(real, fake, k, k_density, chunk=7)
    assert ours == pytest.approx(double_loop(real.tolist(), fake.tolist(), k, k_density), abs=1e-12)
    images = real.reshape(23, 3, 1, 1).expand(23, 3, 2, 2)
    assert prdc(images, fake.reshape(31, 3, 1, 1).expand(31, 3, 2, 2), k, k_density) == pytest.approx(
        prdc(real.repeat_interleave(4, 1), fake.repeat_interleave(4, 1), k, k_density))


def draws(law, n, seeds):
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        yield law.sample(n, gen), gen


@pytest.mark.parametrize("law", [GaussianMixture(MEANS, STDS, WEIGHTS), RandomMixture(dim=64)], ids=["2d", "64d"])
def test_identical_laws_give_density_one_and_coverage_in_closed_form(law):
    """For i.i.d. real and generated rows of one continuous law, a generated row falls in a given real ball with
    probability k/N (its rank among N exchangeable rows), so E[density] = 1; a real ball is empty when its k
    nearest of the other N − 1 + M rows are all real:
    E[coverage] = 1 − Π_{i<k} (N − 1 − i)/(N − 1 + M − i)."""
    n, m, seeds = 1500, 1000, range(4)
    got = [prdc(real, law.sample(m, gen)) for real, gen in draws(law, n, seeds)]
    density = np.mean([g["density"] for g in got])
    coverage = np.mean([g["coverage"] for g in got])
    exact = 1 - math.prod((n - 1 - i) / (n - 1 + m - i) for i in range(5))
    assert density == pytest.approx(1.0, abs=0.02)
    assert coverage == pytest.approx(exact, abs=0.006)


def test_a_dropped_component_lowers_recall_and_coverage_by_its_weight_and_keeps_precision():
    """Real rows of the removed component (weight w = 8/36) lie far from every generated row: recall and
    coverage fall to at most 1 − w, and a little above (1 − w) times their exact-sample values (the generated
    rows are denser on the other components than exact samples are); generated rows all lie on the data:
    precision and density stay at their exact-sample values."""
    law, dropped = GaussianMixture(MEANS, STDS, WEIGHTS), GaussianMixture(MEANS[:7], STDS[:7], WEIGHTS[:7])
    w = WEIGHTS[7] / sum(WEIGHTS)
    exact, without = {}, {}
    for real, gen in draws(law, 2000, range(3)):
        for out, q in ((exact, law), (without, dropped)):
            for name, value in prdc(real, q.sample(2000, gen)).items():
                out[name] = out.get(name, 0) + value / 3
    assert exact["recall"] * (1 - w) - 0.01 < without["recall"] < 1 - w
    assert exact["coverage"] * (1 - w) - 0.01 < without["coverage"] < 1 - w
    assert without["precision"] == pytest.approx(exact["precision"], abs=0.01)
    assert without["density"] == pytest.approx(exact["density"], abs=0.03)


def test_widened_components_lower_precision_and_density_and_keep_recall():
    law, wide = GaussianMixture(MEANS, STDS, WEIGHTS), GaussianMixture(MEANS, [1.5 * s for s in STDS], WEIGHTS)
    exact, widened = {}, {}
    for real, gen in draws(law, 2000, range(3)):
        for out, q in ((exact, law), (widened, wide)):
            for name, value in prdc(real, q.sample(2000, gen)).items():
                out[name] = out.get(name, 0) + value / 3
    assert widened["precision"] < exact["precision"] - 0.04
    assert widened["density"] < exact["density"] - 0.08
    assert widened["recall"] == pytest.approx(exact["recall"], abs=0.015)
    assert exact["coverage"] - widened["coverage"] < (exact["density"] - widened["density"]) / 2


def test_prdc_refuses_what_it_cannot_compare():
    x = torch.randn(10, 3)
    for args, text in [((x, torch.randn(10, 4)), "width 3 and generated features of width 4"),
                       ((x[:1], x), "at least 2 rows"), ((x, x, 10), "k=10 needs more than 10 rows")]:
        with pytest.raises(ConfigError, match=text) as e:
            prdc(*args)
        assert "\n" not in str(e.value)


# --- feature networks ---------------------------------------------------------------------------------------------

def torch_fidelity_resize():
    """torch-fidelity's TensorFlow-1 resize, loaded from its file (its package imports torchvision, which may not
    fit the installed torch), or None where torch-fidelity is not installed."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        return None
    path = Path(spec.submodule_search_locations[0]) / "interpolate_compat_tensorflow.py"
    module_spec = importlib.util.spec_from_file_location("tf1_resize", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.interpolate_bilinear_2d_like_tensorflow1x


def test_the_resize_is_tensorflow_1s():
    """Output pixel i reads the input at i · n_in / n_out (no half-pixel centres): an 8 → 16 resize keeps every
    even output pixel equal to an input pixel and puts the odd ones halfway, the last one repeated; where
    torch-fidelity is installed, its own function gives the same values."""
    x = torch.randint(0, 256, (2, 3, 8, 8)).float()
    y = resize_like_tensorflow1(x, 16)
    assert torch.equal(y[..., ::2, ::2], x)
    assert torch.allclose(y[..., 1:-1:2, ::2], (x[..., :-1, :] + x[..., 1:, :]) / 2)
    assert torch.equal(y[..., -1, ::2], x[..., -1, :])
    theirs = torch_fidelity_resize()
    if theirs is not None:
        for shape in [(2, 3, 8, 8), (1, 1, 28, 20), (1, 3, 300, 256)]:
            x = torch.randint(0, 256, shape).float()
            assert torch.allclose(resize_like_tensorflow1(x, 224), theirs(x, size=(224, 224), align_corners=False),
                                  atol=1e-4)


HUBCONF = '''
import torch


class Pooled(torch.nn.Module):
    """A stand-in for DINOv2: channel means and mean squares of a fixed 1x1 convolution (8 features)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        assert x.shape[1:] == (3, 224, 224)
        h = torch.tanh(self.conv(x))
        return torch.cat([h.mean((2, 3)), h.pow(2).mean((2, 3))], 1)


def dinov2_vits14(pretrained=True):
    assert not pretrained, "would download"
    return Pooled()
'''


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A torch.hub folder holding a stand-in DINOv2 repository and its weight file, as torch.hub.load leaves
    them after the one-time fetch."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(0)
    net = torch.hub.load(str(repo), "dinov2_vits14", source="local", pretrained=False)
    (tmp_path / "hub" / "checkpoints").mkdir()
    torch.save(net.state_dict(), tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth")
    return net


def test_dinov2_features_are_torch_fidelitys_preprocessing_of_the_local_model(hub):
    net = DINOv2Features("vits14", batch=3)
    images = torch.randint(0, 256, (7, 3, 6, 5), dtype=torch.uint8)
    x = resize_like_tensorflow1(images.float(), 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1) * 255
    with torch.no_grad():
        expected = hub((x - mean) / std)
    assert torch.allclose(net(images), expected, atol=1e-6)
    gray = images[:, :1]
    assert torch.allclose(net(gray), net(gray.expand(-1, 3, -1, -1)))
    assert net.name == "dinov2-vits14-cls:dinov2_vits14_pretrain.pth"


@pytest.mark.slow
def test_fd_dinov2_is_the_frechet_distance_of_the_dinov2_features(hub, tmp_path):
    """FID's machinery with DINOv2 features: the distance equals the closed form of the two feature sets'
    means and covariances, held-out images score far below noise, and PRDC compares as many reference rows."""
    rng = np.random.default_rng(0)
    data = ImageData(np.broadcast_to(rng.integers(100, 140, (80, 3, 1, 1)), (80, 3, 4, 4)), test_fraction=0.25)
    net = DINOv2Features("vits14")
    fid = FID(data, net, cache=tmp_path / "cache", prdc=True, k=2, k_density=2, kid_subsets=10)
    held_out = data.test_x.float()
    scores = fid(held_out)
    real = net(torch.from_numpy(data.store[data.train_index])).double().numpy()
    fake = net(torch.from_numpy(data.store[data.test_index])).double().numpy()
    assert scores["fid"] == pytest.approx(frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0),
                                                           np.cov(fake, rowvar=False)), rel=1e-6)
    assert scores["prdc_num"] == 20 and set(scores) >= {"precision", "recall", "density", "coverage"}
    noise = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert fid(noise)["fid"] > 10 * scores["fid"]


def test_missing_dinov2_code_or_weights_say_how_to_fetch_them_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as e:
        DINOv2Features()
    text = str(e.value)
    assert "\n" not in text and "torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')" in text
    assert "repo=PATH" in text
    (tmp_path / "hub" / "facebookresearch_dinov2_main").mkdir(parents=True)
    with pytest.raises(ConfigError, match="dinov2_vitl14_pretrain.pth"):
        DINOv2Features()
    with pytest.raises(ConfigError, match="model='vitx'"):
        DINOv2Features("vitx")


@pytest.mark.slow
def test_pixels_as_features(tmp_path):
    """The digits in their pixels: the training images score FID 0, the held-out ones a little, and noise lies
    off the digits' manifold (precision and density near 0) while held-out digits lie on it."""
    data = Digits()
    fid = FID(data, PixelFeatures(), cache=tmp_path, prdc=True, kid_reference=500, kid_subsets=10)
    held_out = fid(data.test_x.float())
    assert fid(data.train_x.float())["fid"] == pytest.approx(0, abs=1e-9)
    noise = fid(torch.rand(len(data.test_x), *data.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert 0 < held_out["fid"] < noise["fid"] / 10
    assert held_out["precision"] > 0.8 and held_out["recall"] > 0.8 and noise["precision"] < 0.05
    assert noise["density"] < 0.05 < held_out["density"]
    assert PixelFeatures()(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)).tolist() == [[1.0] * 64] * 2


def test_metrics_of_other_feature_networks_are_named_by_their_key(tmp_path):
    scores = {"fid": 1.0, "kid": 2.0, "kid_std": 0.1, "fid_num": 5, "fid_seconds": 3.0, "precision": 0.5}
    assert renamed(scores, "fid") == scores
    assert renamed(scores, "fd_dinov2") == {"fd_dinov2": 1.0, "fd_dinov2_kid": 2.0, "fd_dinov2_kid_std": 0.1,
                                            "fd_dinov2_num": 5, "fd_dinov2_seconds": 3.0, "fd_dinov2_precision": 0.5}
    log_fid(tmp_path, 2, renamed(scores, "fd_dinov2"), "fd_dinov2")
    assert (tmp_path / "fd_dinov2_log.csv").read_text().splitlines() == [
        "step,fd_dinov2,fd_dinov2_kid,fd_dinov2_precision", "2,1,2,0.5"]
    (tmp_path / "fid_log.csv").write_text("step,fid,kid\n1,9,8\n5,7,6\n")
    log_fid(tmp_path, 3, scores)
    assert (tmp_path / "fid_log.csv").read_text().splitlines() == ["step,fid,kid,precision", "1,9,8,", "3,1,2,0.5"]


def test_data_space_prdc_of_the_exact_score_sits_at_its_floor(tmp_path):
    """run.py model=oracle eval=[prdc]: the exact score's samples score as a second draw of the data does, to
    sampling noise (coverage over prior draws of 3000 samples spreads by about ±0.01)."""
    from test_run import run_main

    proc = run_main(tmp_path, "model=oracle", "data=gmm", "solver=dpm", "solver.steps=30", "sample.num=3000",
                    "sample.plot=false", "eval=[prdc]")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["prdc_num"] == 3000
    for name in ("precision", "recall", "density", "coverage"):
        assert m[name] == pytest.approx(m[f"{name}_floor"], abs=0.035), name


@pytest.mark.slow
def test_data_space_prdc_refuses_images(tmp_path):
    from test_run import run_main

    proc = run_main(tmp_path, "data=digits", "eval=[prdc]", "train.steps=0")
    assert proc.returncode == 2
    assert "use eval=[fid] with eval.fid.features._target_=scoresde.evaluation.PixelFeatures" in proc.stderr


def test_the_protocol_scores_with_the_feature_networks_it_is_told_to_use():
    from scoresde.tasks import FIDProtocol

    features = {"fid": {"_target_": "x"}, "fd_pixels": {"_target_": "y"}}
    assert list(FIDProtocol(features=features, use=["fd_pixels"]).features) == ["fd_pixels"]
    assert list(FIDProtocol(features=features).features) == ["fid", "fd_pixels"]
    for use in (["fd_dinov2"], []):
        with pytest.raises(ConfigError, match=r"use=.* is invalid: expected a list of the feature networks fid, "
                                              "fd_pixels") as e:
            FIDProtocol(features=features, use=use)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="weights="):
        PixelFeatures(weights="x.pth")
