"""The continuous-time ELBO against the exact NLL, its standard error, run.py's likelihood=elbo, and the
importance-weighted dequantization bound against exact cell probabilities."""
import json
import math
import tempfile
from functools import lru_cache

import numpy as np
import pytest
import torch

from helpers import ALL_SDES, UserFlow, mixture_16d, mixture_2d
from models import MLP, MixtureScore, ScoreModel
from scoresde.data import DataSpec, GaussianMixture
from scoresde import Pipeline
from sde import ConfigError
from solvers import ELBO
from test_run import run_main as run
from scoresde.training import DSMLoss, Trainer

SDES = {**ALL_SDES, "user_flow": UserFlow}


def prior_mismatch(sde, oracle, x, draws=400, seed=5):
    """E_z[log p_T(x_T) − log π(x_T)], x_T = a(T) x + s(T) z, per point (Monte Carlo; both densities are nearly
    equal, so the difference varies little)."""
    T = torch.tensor(sde.T, dtype=torch.float64)
    z = torch.randn(draws, *x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_T = (sde.a(T) * x + sde.s(T) * z).reshape(-1, *x.shape[1:])
    diff = oracle.log_prob(x_T, torch.full((len(x_T),), sde.T, dtype=torch.float64)) - sde.prior_logp(x_T)
    return diff.reshape(draws, -1).mean(0)


# The fast tier: every process in 2-D, VP and the user's flow in 16-D.
@pytest.mark.parametrize("mixture, sde_name", [
    pytest.param(mixture, name, marks=() if mixture is mixture_2d or name in ("vp", "user_flow") else pytest.mark.slow,
                 id=f"{'2d' if mixture is mixture_2d else '16d'}-{name}")
    for mixture in (mixture_2d, mixture_16d) for name in ("vp", "ve", "user_vp", "user_flow", "subvp", "cosine", "rf")])
def test_elbo_of_the_exact_score_is_the_exact_nll(sde_name, mixture):
    """With the exact score the bound is tight: ELBO − prior mismatch − exact NLL, averaged over 100 points,
    lies within 4 of its standard errors (2000 draws per point) plus 0.002 nats/dim, for the built-in processes
    and for a user's subclass giving only f, g (user_vp) or only a, s (user_flow)."""
    sde, mix = SDES[sde_name](), mixture()
    oracle = MixtureScore(sde, mix)
    x = mix.sample(100, torch.Generator().manual_seed(0), dtype=torch.float64)
    bound, stderr, nfe = ELBO(draws=2000).estimate(sde, oracle, x, torch.Generator().manual_seed(1))
    assert nfe == 2000 and bound.shape == stderr.shape == (100,)
    gap = bound - prior_mismatch(sde, oracle, x) + mix.log_prob(x)
    se = stderr.norm().item() / len(x)
    assert abs(gap.mean().item()) < 4 * se + 0.002 * mix.dim, (gap.mean().item(), se)
    assert ((gap / stderr).abs() > 4).float().mean() < 0.02


def test_the_standard_error_is_honest():
    """30 repeats of the estimate with 64 draws on the same 5 points: the spread of the bound across repeats is
    what the reported standard error says (ratio between 0.6 and 1.3; stratified draws make the estimate
    slightly conservative)."""
    sde, mix = ALL_SDES["vp"](), mixture_2d()
    oracle = MixtureScore(sde, mix)
    x = mix.sample(5, torch.Generator().manual_seed(0), dtype=torch.float64)
    elbo = ELBO(draws=64)
    runs = [elbo.estimate(sde, oracle, x, torch.Generator().manual_seed(seed))[:2] for seed in range(30)]
    bounds, errors = torch.stack([b for b, _ in runs]), torch.stack([e for _, e in runs])
    ratio = bounds.std(0) / errors.pow(2).mean(0).sqrt()
    assert ((ratio > 0.6) & (ratio < 1.3)).all(), ratio


def test_elbo_any_batch_shape_and_a_custom_prior():
    means = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mix, sde = GaussianMixture(means, [0.3, 0.5], [1, 2]), ALL_SDES["vp"]()

    class Wide(type(sde)):
        """A prior twice as wide, through prior_logp alone: the prior term is then drawn, not closed-form."""

        def prior_logp(self, z):
            return super().prior_logp(z / 2) - z[0].numel() * math.log(2)

    x = mix.sample(20, torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = -mix.log_prob(x)
    for process in (sde, Wide()):
        oracle = MixtureScore(process, mix)
        bound, stderr, _ = ELBO(draws=500).estimate(process, oracle, x, torch.Generator().manual_seed(2))
        gap = bound - prior_mismatch(process, oracle, x) - exact
        assert bound.shape == (20,) and abs(gap.mean().item()) < 4 * stderr.norm().item() / 20 + 0.02


def test_bad_elbo_options_are_named():
    with pytest.raises(ConfigError, match="draws=1 is invalid"):
        ELBO(draws=1)
    with pytest.raises(ConfigError, match="t_min=0 is invalid"):
        ELBO(t_min=0)
    with pytest.raises(ConfigError, match="t_min=1.0 is invalid"):
        ELBO(t_min=1.0).estimate(ALL_SDES["rf"](), None, torch.zeros(2, 2))


@lru_cache(maxsize=None)
def trained(steps=600):
    """An MLP trained briefly (eps loss, VP) on the 3-component mixture: far enough from the data for the ELBO's
    gap to show."""
    sde, data = ALL_SDES["vp"](), mixture_2d()
    torch.manual_seed(0)
    model = ScoreModel(MLP(shape=(2,), hidden=64, depth=2, embed_dim=32), sde)
    with tempfile.TemporaryDirectory() as tmp:
        ema, _ = Trainer(steps=steps, batch_size=256, lr=3e-3, warmup=50, ema_decay=0.99, ckpt_every=10**6,
                         progress=False, seed=0).fit(model, DSMLoss(), sde, data, tmp, torch.device("cpu"))
    return sde, ema.eval(), data


@pytest.mark.slow
def test_elbo_of_a_trained_model_lies_above_its_ode_likelihood():
    """Measured 0.26 nats/dim above the ODE's NLL, with a standard error of 0.014: the bound is more than 5
    standard errors above it, and above the exact NLL."""
    sde, model, data = trained()
    pipe = Pipeline(sde, model, data)
    x = data.test(400, torch.Generator().manual_seed(1))
    bound, stderr, stats = pipe.elbo(x, info=True, draws=256)
    nll = pipe.nll(x)
    se = stderr.norm().item() / len(x)
    assert bound.mean().item() - nll.mean().item() > 5 * se, (bound.mean(), nll.mean(), se)
    assert bound.mean().item() > -data.log_prob(x.double()).mean().item()
    assert stats["nfe"] == 256 and torch.equal(stats["x"], x)


def test_run_py_elbo_writes_its_keys(tmp_path):
    proc = run(tmp_path, "model=oracle", "data=gmm", "likelihood=elbo", "sample.num=200", "solver.steps=20",
               "eval.num=300", "sample.plot=false", "threads=1")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("elbo", "elbo_bpd", "elbo_stderr", "exact_nll", "nfe_elbo", "elbo_seconds"):
        assert key in metrics, key
    assert "nll" not in metrics
    assert abs(metrics["elbo"] - metrics["exact_nll"]) < 4 * metrics["elbo_stderr"] + 0.01
    assert metrics["elbo_bpd"] == pytest.approx(metrics["elbo"] / 2 / np.log(2))
    lik = np.load(tmp_path / "likelihood.npz")
    assert lik["x"].shape == (300, 2) and lik["elbo"].shape == lik["elbo_stderr"].shape == lik["exact_nll"].shape
    assert lik["elbo"].mean() == pytest.approx(metrics["elbo"])
    assert "elbo_stderr" in proc.stdout


def test_run_py_refuses_an_unknown_likelihood_in_one_line(tmp_path):
    proc = run(tmp_path, "model=oracle", "data=gmm", "likelihood=exact", "sample.num=10", "threads=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "likelihood='exact' is unknown: choose one of false, true (the ODE likelihood), elbo")


# -- dequantization -----------------------------------------------------------------------------------------------

LEVELS, LO, HI = 8, -1.0, 1.0


def quantized_mixture():
    """A 2-D mixture seen through 8 levels per dimension on (−1, 1): bins of width 0.25, narrow enough
    components that the density varies within a bin."""
    return GaussianMixture([[-0.4, 0.1], [0.35, -0.3]], [0.15, 0.25], [0.6, 0.4])


def cell_log_prob(mix, x, width):
    """log P(cell of x) = log Σ_k w_k Π_d [Φ((hi_d − μ_kd)/σ_k) − Φ((lo_d − μ_kd)/σ_k)], exactly (erf)."""
    lo, hi = x - width / 2, x + width / 2
    means, stds = mix.means[:, None, :], mix.stds[:, None, None]
    mass = torch.special.ndtr((hi - means) / stds) - torch.special.ndtr((lo - means) / stds)
    return torch.logsumexp(torch.log(mix.weights)[:, None] + torch.log(mass).sum(-1), 0)


def test_importance_weighted_dequantization_bounds_the_exact_cell_probability_and_tightens_with_k():
    """On bin centres of the quantized mixture, with the exact density p: the K-draw bound
    −log (1/K Σ_k p(x + u_k)) − D log(width), averaged over 400 repeats, lies above the exact −log P(cell) for
    every K, does not rise with K = 1, 2, 8, 64, 512 (within noise), falls by 0.1 nats on average between K = 1
    and 512 (measured 0.25: 0.02 to 0.56 per point) and ends within 0.005 nats (plus noise) of the exact value."""
    mix, spec = quantized_mixture(), DataSpec((2,), levels=LEVELS, value_range=(LO, HI))
    width = spec.bin_width
    centres = torch.tensor([[-0.375, 0.125], [-0.625, -0.125], [0.125, 0.125], [-0.125, 0.375]], dtype=torch.float64)
    exact = -cell_log_prob(mix, centres, width)
    gen = torch.Generator().manual_seed(0)
    means, errors = [], []
    for k in (1, 2, 8, 64, 512):
        x = centres.repeat(400, 1)
        y = spec.dequantize_draws(x, k, gen)
        assert y.shape == (k, *x.shape) and ((y - x).abs() <= width / 2).all()
        nll = -mix.log_prob(y.reshape(-1, 2)).reshape(k, -1)
        bound = (spec.importance_weighted_nll(nll) - 2 * math.log(width)).reshape(400, -1)
        means.append(bound.mean(0))
        errors.append(bound.std(0) / math.sqrt(400))
        assert (means[-1] > exact - 4 * errors[-1]).all(), (k, means[-1], exact)
    means, errors = torch.stack(means), torch.stack(errors)
    noise = 4 * (errors[1:] ** 2 + errors[:-1] ** 2).sqrt()
    assert (means[1:] < means[:-1] + noise).all(), means
    assert (means[0] - means[-1]).mean() > 0.1, means
    assert ((means[-1] - exact).abs() < 4 * errors[-1] + 0.005).all(), (means[-1], exact)
    assert torch.allclose(spec.importance_weighted_nll(torch.full((5, 3), 2.0)), torch.full((3,), 2.0))


class ExactLikelihood:
    """A likelihood that knows the density: −log p(x), one evaluation."""

    def __init__(self, mix):
        self.mix = mix

    def __call__(self, sde, score_fn, x, generator=None):
        return -self.mix.log_prob(x), 1


def test_pipeline_combines_k_dequantizations():
    """pipe.nll(..., dequant_draws=K) is the importance-weighted bound of the same K dequantizations; K = 1 is
    today's uniform dequantization, and bits/dim of the bound approach the exact cell probability's."""
    mix, spec = quantized_mixture(), DataSpec((2,), levels=LEVELS, value_range=(LO, HI))
    centres = torch.tensor([[-0.375, 0.125], [0.375, -0.375]], dtype=torch.float64).repeat(200, 1)
    pipe = Pipeline(ALL_SDES["vp"](), None, spec)
    lik = ExactLikelihood(mix)
    single, stats = pipe.nll(centres, likelihood=lik, info=True, seed=3)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(stats["x"], spec.dequantize(centres, gen)) and torch.equal(single, -mix.log_prob(stats["x"]))
    multi, stats = pipe.nll(centres, likelihood=lik, info=True, seed=3, dequant_draws=16)
    y = spec.dequantize_draws(centres, 16, torch.Generator().manual_seed(3))
    expected = spec.importance_weighted_nll(-mix.log_prob(y.reshape(-1, 2)).reshape(16, -1))
    assert torch.allclose(multi, expected) and torch.equal(stats["x"], centres)
    exact_bpd = spec.bits_per_dim(-cell_log_prob(mix, centres, spec.bin_width).mean().item() + 2 * math.log(
        spec.bin_width))
    assert exact_bpd < pipe.bits_per_dim(multi) < pipe.bits_per_dim(single)
    with pytest.raises(ConfigError, match="dequant_draws=0 is invalid"):
        pipe.nll(centres, likelihood=lik, dequant_draws=0)


def test_pipeline_elbo_with_dequantization():
    """pipe.elbo on quantized data: K = 4 dequantizations per point give one bound and one standard error per
    point, below the K = 1 bound on average."""
    mix = quantized_mixture()
    sde = ALL_SDES["vp"]()
    spec = DataSpec((2,), levels=LEVELS, value_range=(LO, HI))
    pipe = Pipeline(sde, MixtureScore(sde, mix), spec)
    x = torch.tensor([[-0.375, 0.125], [0.375, -0.375]], dtype=torch.float64).repeat(50, 1)
    one, se_one = pipe.elbo(x, draws=200)
    four, se_four = pipe.elbo(x, draws=200, dequant_draws=4)
    assert one.shape == four.shape == se_four.shape == (100,)
    assert four.mean() < one.mean() and (se_four > 0).all()
