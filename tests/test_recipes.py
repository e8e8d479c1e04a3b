"""The CIFAR-10 recipes follow score_sde's DDPM++ continuous configurations and build a U-Net of DDPM++'s size."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
# Parameter counts of score_sde_pytorch's NCSNpp built with configs/vp/cifar10_ddpmpp_continuous.py (4 residual
# blocks) and configs/subvp/cifar10_ddpmpp_deep_continuous.py (8), counted with benchmarks/peer_score_sde.py's
# configuration of that checkout.
DDPMPP_PARAMETERS = {4: 61_804_419, 8: 106_632_579}
RECIPES = {"cifar10_ddpmpp": "sde.VPSDE", "cifar10_ddpmpp_subvp": "sde.SubVPSDE", "cifar10_ddpmpp_ve": "sde.VESDE",
           "cifar10_ddpmpp_deep": "sde.SubVPSDE"}


def recipe(name):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", "data.path=/nowhere"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_follows_score_sde_ddpmpp(name):
    cfg = recipe(name)
    assert cfg.sde._target_ == RECIPES[name] and cfg.data._target_ == "scoresde.data.Cifar10" and cfg.data.flip
    net = cfg.model.net
    assert (net.channels, list(net.multipliers), list(net.attention_resolutions), net.dropout) == \
        (128, [1, 2, 2, 2], [16], 0.1)
    assert net.num_res_blocks == (8 if name.endswith("deep") else 4)
    train = cfg.train
    assert (train.batch_size, train.lr, train.warmup, train.grad_clip, train.ema_decay, train.optimizer) == \
        (128, 2e-4, 5000, 1.0, 0.9999, "adam")
    assert cfg.loss.weighting == "eps" and cfg.model.parameterization == "eps"
    if name.endswith("_ve"):
        assert cfg.solver._target_ == "solvers.PredictorCorrector" and cfg.solver.corrector == "langevin"
        assert cfg.solver.step_rule == "kernel" and cfg.solver.steps == 1000


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [4, 8])
def test_recipe_unet_has_ddpmpp_size(blocks):
    from models import UNet

    net = recipe("cifar10_ddpmpp_deep" if blocks == 8 else "cifar10_ddpmpp").model.net
    unet = instantiate(net)(shape=(3, 32, 32))
    assert isinstance(unet, UNet)
    count = sum(p.numel() for p in unet.parameters())
    assert abs(count / DDPMPP_PARAMETERS[blocks] - 1) < 0.10, count
