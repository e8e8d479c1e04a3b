"""Networks, the score wrapper's parameterizations (exact against the oracle), EMA and time embeddings."""
import pytest
import torch
from torch import nn

from helpers import mixture_2d
from models import MixtureScore
from scoresde.training import EMA
from models.embedding import FourierEmbedding, SinusoidalEmbedding, time_embedding
from models.mlp import MLP
from models.unet import UNet
from models.wrapper import ScoreModel
from sde import VESDE, VPSDE, ConfigError, RectifiedFlow, config_scope, expand

DTYPES = [torch.float32, torch.float64]
SDES = {"vp": VPSDE, "ve": VESDE, "rf": RectifiedFlow}

TINY_UNETS = {  # shape: (multipliers, attention_resolutions)
    (1, 8, 8): ((1, 2), (4,)),
    (3, 16, 16): ((1, 2, 2), (8,)),
    (3, 32, 32): ((1, 2, 2), (16,)),
    (1, 28, 28): ((1, 2, 2), (14,)),
}


def tiny_unet(shape, **kwargs):
    multipliers, attention = TINY_UNETS[shape]
    return UNet(shape=shape, channels=8, multipliers=multipliers, num_res_blocks=1, attention_resolutions=attention,
                groups=4, **kwargs)


def assert_gradients_reach_every_parameter(net, x):
    """Zero-initialised output layers block gradients at initialisation, so perturb every weight first."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    t = torch.rand(x.shape[0], dtype=x.dtype)
    net(x, t).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# -- networks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2,), (16,)])
@pytest.mark.parametrize("batch", [1, 7])
def test_mlp_output_shape(shape, dtype, batch):
    net = MLP(shape=shape, hidden=32, depth=2, embed_dim=16).to(dtype)
    x = torch.randn(batch, *shape, dtype=dtype)
    out = net(x, torch.rand(batch, dtype=dtype))
    assert out.shape == x.shape and out.dtype == dtype
    assert net(x, torch.tensor(0.5, dtype=dtype)).shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", sorted(TINY_UNETS))
def test_unet_output_shape(shape, dtype):
    net = tiny_unet(shape).to(dtype)
    for batch in (1, 3):
        x = torch.randn(batch, *shape, dtype=dtype)
        out = net(x, torch.rand(batch, dtype=dtype))
        assert out.shape == x.shape and out.dtype == dtype


def test_mlp_gradients_reach_every_parameter():
    assert_gradients_reach_every_parameter(MLP(shape=(16,), hidden=32, depth=3, embed_dim=16), torch.randn(5, 16))


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 28, 28)])
def test_unet_gradients_reach_every_parameter(shape):
    net = tiny_unet(shape, dropout=0.1, embedding="fourier")
    assert_gradients_reach_every_parameter(net, torch.randn(2, *shape))


def test_networks_start_at_zero():
    x = torch.randn(4, 1, 8, 8)
    assert tiny_unet((1, 8, 8))(x, torch.rand(4)).abs().max() == 0
    assert MLP(shape=(1, 8, 8))(x, torch.rand(4)).abs().max() == 0


def test_hydra_lists_and_partial_net():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    net = UNet(shape=OmegaConf.create([1, 8, 8]), channels=8, multipliers=OmegaConf.create([1, 2]),
               attention_resolutions=OmegaConf.create([4]), groups=4)
    assert net(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)
    node = OmegaConf.create({"_target_": "models.wrapper.ScoreModel", "parameterization": "v",
                             "net": {"_target_": "models.mlp.MLP", "_partial_": True, "hidden": 16, "depth": 1}})
    model = instantiate(node, sde=VPSDE(), data=mixture_2d())
    assert isinstance(model.net, MLP) and model.net.shape == (2,)
    assert model(torch.randn(3, 2), torch.rand(3)).shape == (3, 2)


# -- the wrapper: exact conversions ---------------------------------------------------------------

class OracleNet(nn.Module):
    """A 'network' that returns the exact target for a parameterization, undoing ScoreModel's c_in."""

    def __init__(self, sde, mixture, kind, sigma_data):
        super().__init__()
        self.sde, self.oracle, self.kind, self.sigma_data = sde, MixtureScore(sde, mixture), kind, sigma_data

    def forward(self, x_in, t):
        a, s = expand(self.sde.a(t), x_in), expand(self.sde.s(t), x_in)
        x = x_in * torch.sqrt(a**2 * self.sigma_data**2 + s**2)
        score = self.oracle(x, t)
        eps, x0 = -s * score, (x + s**2 * score) / a
        r = torch.sqrt(a**2 + s**2)
        sigma, sd = s / a, self.sigma_data
        x0_raw = (x0 - sd**2 / (sigma**2 + sd**2) * x / a) / (sigma * sd / torch.sqrt(sigma**2 + sd**2))
        return {"eps": eps, "x0": x0_raw, "v": (a * eps - s * x0) / r, "score": s * score}[self.kind]


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_parameterizations_give_the_exact_score(sde_name, kind, sigma_data):
    sde, mix = SDES[sde_name](), mixture_2d()
    model = ScoreModel(OracleNet(sde, mix, kind, sigma_data), sde, parameterization=kind, sigma_data=sigma_data)
    gen = torch.Generator().manual_seed(0)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(256, generator=gen, dtype=torch.float64)
    x0 = mix.sample(256, gen, dtype=torch.float64)
    x = sde.marginal_sample(x0, t, torch.randn(256, 2, generator=gen, dtype=torch.float64))
    exact = MixtureScore(sde, mix)(x, t)
    score = model(x, t)
    scale = exact.abs().amax(1, keepdim=True)
    assert ((score - exact).abs() / scale).max() < 1e-10
    a, s = expand(sde.a(t), x), expand(sde.s(t), x)
    assert torch.allclose(model.denoise(x, t), (x + s**2 * score) / a, rtol=1e-10, atol=1e-10)
    assert torch.allclose(model.eps(x, t), -s * score, rtol=1e-10, atol=1e-12)


class Recorder(nn.Module):
    def forward(self, x, t):
        self.seen = x
        return torch.zeros_like(x)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_network_sees_unit_scale_input(sde_name):
    """x_t = a x_0 + s z with std(x_0) = σ_data has variance a² σ_data² + s²: c_in x_t has unit variance."""
    sde, net, sigma_data = SDES[sde_name](), Recorder(), 3.0
    model = ScoreModel(net, sde, sigma_data=sigma_data)
    gen = torch.Generator().manual_seed(0)
    for t in (0.01, 0.5, sde.T):
        tt = torch.full((20000,), t, dtype=torch.float64)
        x0 = sigma_data * torch.randn(20000, 4, generator=gen, dtype=torch.float64)
        model(sde.marginal_sample(x0, tt, torch.randn(20000, 4, generator=gen, dtype=torch.float64)), tt)
        assert net.seen.std().item() == pytest.approx(1.0, abs=0.02)


def test_score_model_on_images_with_a_unet():
    model = ScoreModel(tiny_unet((1, 8, 8)), VESDE(), parameterization="x0")
    x = 50 * torch.randn(2, 1, 8, 8)
    assert model(x, torch.tensor([0.3, 1.0])).shape == x.shape
    assert torch.isfinite(model(x, torch.tensor(1.0))).all()


# -- one-line errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: ScoreModel(MLP(shape=(2,)), VPSDE(), parameterization="noise"),
     r"^model\.parameterization='noise' is unknown: choose one of consistency, eps, score, v, x0$"),
    (lambda: time_embedding("foo", 16), r"^model\.net\.embedding='foo' is unknown: choose one of fourier, sinusoidal$"),
    (lambda: MLP(shape=(2,), embedding="foo"), r"model\.net\.embedding='foo' is unknown"),
    (lambda: UNet(shape=(1, 8, 8), embedding="gauss"), r"model\.net\.embedding='gauss' is unknown"),
    (lambda: MLP(shape=(2,), activation="swish"), r"model\.net\.activation='swish' is unknown"),
    (lambda: UNet(shape=(1, 28, 28), multipliers=(1, 2, 2, 2)),
     r"model\.net\.shape=\(1, 28, 28\) does not fit model\.net\.multipliers=\(1, 2, 2, 2\)"),
    (lambda: UNet(shape=(3, 32, 30), multipliers=(1, 2, 2, 2)), r"shape=\(3, 32, 30\)"),
    (lambda: UNet(shape=(28, 28)), r"model\.net\.shape=\(28, 28\) is invalid: expected \(C, H, W\) for a U-Net"),
    (lambda: UNet(shape=(1, 8, 8), channels=12, groups=8), r"model\.net\.groups=8 must divide every channel count"),
    (lambda: FourierEmbedding(7), r"time embedding size 7 is invalid"),
    (lambda: MLP(shape=(2,), embed_dim=9), r"time embedding size 9 is invalid"),
])
def test_bad_configuration_is_named_in_one_line(build, message):
    """A ConfigError names the parameter; built under the key model (the wrapper) or model.net (a network), the
    key is put in front."""
    with pytest.raises(ConfigError, match=message) as info:
        with config_scope("model" if "net\\." not in message and "embedding size" not in message else "model.net"):
            build()
    assert "\n" not in str(info.value)


# -- EMA ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_the_closed_form_average(warmup):
    """θ_k = k after the k-th step: θ̄_k = d_k θ̄_{k−1} + (1 − d_k) k, θ̄_0 = θ_0 = 0."""
    model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.zero_()
    d, k = 0.9, 25
    ema = EMA(model, decay=d, warmup=warmup)
    for step in range(1, k + 1):
        with torch.no_grad():
            model.weight.fill_(step)
        ema.update(model)
    decays = [min(d, (1 + n) / (10 + n)) if warmup else d for n in range(k)]
    expected = 0.0
    for j in range(1, k + 1):
        weight = 1 - decays[j - 1]
        for n in range(j, k):
            weight *= decays[n]
        expected += weight * j
    if not warmup:
        assert expected == pytest.approx(sum((1 - d) * d ** (k - j) * j for j in range(1, k + 1)), rel=1e-12)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 3), expected, dtype=torch.float64), rtol=1e-12)
    assert ema.num_updates == k


def test_ema_swapped_restores_and_state_round_trips():
    torch.manual_seed(0)
    model = MLP(shape=(2,), hidden=16, depth=2, embed_dim=8)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped(model):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema.shadow[k])
        assert not torch.equal(model.inp.weight, own["inp.weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k])
    restored = EMA(model, decay=0.1, warmup=False)
    restored.load_state_dict(ema.state_dict())
    assert (restored.decay, restored.warmup, restored.num_updates) == (0.5, True, 1)
    assert all(torch.equal(restored.shadow[k], ema.shadow[k]) for k in ema.shadow)
    other = MLP(shape=(2,), hidden=16, depth=2, embed_dim=8)
    ema.copy_to(other)
    assert all(torch.equal(v, ema.shadow[k]) for k, v in other.state_dict().items())


# -- time embeddings ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fourier", "sinusoidal"])
def test_embeddings_separate_times(kind):
    emb = time_embedding(kind, 64)
    t = torch.linspace(0, 1, 101)
    e = emb(t)
    assert e.shape == (101, 64)
    distance = torch.cdist(e, e) + torch.eye(101) * 1e9
    assert distance.min() > 0.1


def test_embeddings_are_restored_from_the_state_dict():
    torch.manual_seed(0)
    a = FourierEmbedding(32)
    torch.manual_seed(1)
    b = FourierEmbedding(32)
    t = torch.rand(10)
    assert not torch.allclose(a(t), b(t))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(t), b(t))
    assert "freqs" in a.state_dict() and "freqs" not in SinusoidalEmbedding(32).state_dict()
    assert torch.equal(SinusoidalEmbedding(32)(t), SinusoidalEmbedding(32)(t))

    torch.manual_seed(2)
    net = MLP(shape=(2,), hidden=16, depth=1, embed_dim=8)
    nn.init.normal_(net.out.weight)
    torch.manual_seed(3)
    copy = MLP(shape=(2,), hidden=16, depth=1, embed_dim=8)
    copy.load_state_dict(net.state_dict())
    x = torch.randn(10, 2)
    assert torch.equal(net(x, t), copy(x, t))
