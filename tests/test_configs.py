"""Every config group choice and every experiment composes and builds (without training; networks on the meta
device, so without their weights), through the same steps as a run; old spellings are translated or refused in
one line."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scoresde.cli.build import build
from scoresde.data.base import DataSpec
from scoresde.cli.checks import IMAGE_MODEL
from scoresde.cli.legacy import translate
from scoresde.cli.main import build_evaluations, compose, evaluation_names
from scoresde.paths import config_dir
from scoresde.tasks import Context, Sampling
from scoresde.seeds import STREAMS, Seeds
from sde.errors import ConfigError

CONF = config_dir()


def choices(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_config_dir_is_the_checkout_conf():
    assert CONF == Path(__file__).resolve().parents[1] / "conf" and (CONF / "config.yaml").is_file()


def build_parts(overrides, tmp_path):
    """sde, data, model, solver, task, evaluations, loss and trainer of the composed config, as a run builds
    them (the task and evaluations set up against the data and model)."""
    cfg, _ = compose(overrides)
    sde, data = build("sde", cfg.sde), build("data", cfg.data)
    with torch.device("meta"):
        model = build("model", cfg.model, sde=sde, data=data)
    solver = build("solver", cfg.solver)
    s = cfg.sample
    sampling = Sampling(s.num, OmegaConf.to_container(s.classes) if OmegaConf.is_config(s.classes) else s.classes,
                        s.batch, s.plot, s.max_range, cfg.guidance.scale)
    context = Context(tmp_path, Seeds(cfg.seed), "cpu", solver, sampling)
    mask = {"mask": build("mask", cfg.mask)} if cfg.task._target_ == "scoresde.tasks.Inpaint" else {}
    task = build("task", cfg.task, **mask)
    evaluations = build_evaluations(cfg)
    return dict(cfg=cfg, sde=sde, data=data, model=model, solver=solver, task=task, evaluations=evaluations,
                loss=build("loss", cfg.loss), trainer=build("train", cfg.train), context=context)


@pytest.mark.parametrize("group, choice", [(g, c) for g in ("sde", "solver", "model", "mask", "task", "eval")
                                           for c in choices(g)])
def test_every_group_choice_builds(group, choice, tmp_path):
    overrides = {"model": ["data=gmm"] if choice == "oracle" else [], "task": ["model=oracle", "data=gmm"]}
    extra = overrides.get(group, [])
    if group == "model" and choice == "unet":
        extra = ["data=digits"]
    if group == "task" and choice == "colorize":
        extra = ["data=digits", "model=unet"]
    if group == "model" and choice == "diffusers":
        pytest.skip("model=diffusers needs its own argument (a pipeline folder: tests/test_pretrained.py)")
    if group == "mask" and choice in ("file", "coordinates"):
        pytest.skip(f"mask={choice} needs its own arguments (a path, a list of coordinates)")
    arg = f"+eval={choice}" if group == "eval" else f"{group}={choice}"
    if group == "eval" and choice in ("fid", "fd_dinov2"):
        extra = ["data=digits", "model=unet"]
    parts = build_parts([arg, *extra], tmp_path)
    if group == "eval":
        assert choice in [e.name for e in parts["evaluations"]]
    if group == "task":
        assert parts["task"].name == choice


@pytest.mark.parametrize("choice", [c for c in choices("data") if c not in ("array", "folder", "cifar10", "cifar100")])
def test_every_data_set_builds(choice, tmp_path):
    model = ["model=unet"] if choice == "digits" else []
    build_parts([f"data={choice}", *model], tmp_path)


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_every_experiment_composes_and_builds_its_parts(experiment, tmp_path):
    """A preset on data that needs a folder (CIFAR-10) builds its model for the data's spec instead."""
    cfg, _ = compose([f"experiment={experiment}"])
    if "path" in cfg.data.keys() and OmegaConf.is_missing(cfg.data, "path"):
        sde = build("sde", cfg.sde)
        with torch.device("meta"):
            build("model", cfg.model, sde=sde, data=DataSpec((3, 32, 32), levels=256, value_range=(-1.0, 1.0)))
        build("solver", cfg.solver), build("loss", cfg.loss), build("train", cfg.train), build_evaluations(cfg)
    else:
        build_parts([f"experiment={experiment}"], tmp_path)


def test_the_default_evaluations_and_the_likelihood_shorthand():
    cfg, _ = compose([])
    assert [e.name for e in build_evaluations(cfg)] == ["quality", "mixture", "classifier"]
    for shorthand, name in (("likelihood=true", "ode"), ("likelihood=ode", "ode"), ("likelihood=elbo", "elbo")):
        cfg, _ = compose(["solver=ode", shorthand])
        assert [e.name for e in build_evaluations(cfg)][-1] == name
    cfg, _ = compose(["experiment=digits", "likelihood=false"])
    assert "ode" not in [e.name for e in build_evaluations(cfg)]
    cfg, _ = compose(["eval=[quality,ode]", "eval.ode.method=rk4"])
    assert [e.name for e in build_evaluations(cfg)] == ["quality", "ode"] and cfg.eval.ode.method == "rk4"
    cfg, _ = compose(["eval=[quality]", "likelihood=true", "+eval=elbo"])
    assert [e.name for e in build_evaluations(cfg)] == ["quality", "ode", "elbo"]
    cfg, _ = compose(["eval.conditional=true", "likelihood=true"])
    assert [e.name for e in build_evaluations(cfg)][-1] == "ode" and cfg.eval.ode.conditional is True
    cfg, _ = compose(["eval.classifier=false"])
    assert [e.name for e in build_evaluations(cfg)] == ["quality", "mixture"]


def test_old_spellings_are_translated():
    names = evaluation_names()
    assert translate(["inpaint.num=4", "eval.fid=true", "eval.fid_num=500", "eval.fid_weights=w.pt",
                      "eval.classifier=true"], names, notice=False) == [
        "task.num=4", "+eval=fid", "eval.fid.num=500", "eval.fid.features.weights=w.pt", "+eval=classifier",
        "eval.classifier.required=true"]
    assert translate(["eval.quality=false", "likelihood=false"], names, notice=False) == [
        "++eval.quality=false", "++eval.ode=false", "++eval.elbo=false"]
    with pytest.raises(ConfigError, match="likelihood='maybe' is unknown"):
        translate(["likelihood=maybe"], names)
    with pytest.raises(ConfigError, match="cannot be swept"):
        translate(["likelihood=true,false"], names)


def test_old_spellings_print_one_notice(capsys):
    translate(["inpaint.num=4", "eval.fid_every=10"], evaluation_names())
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: old spellings translated: inpaint.num=4 -> task.num=4")


def test_an_evaluation_set_true_names_the_new_spelling():
    cfg, _ = compose(["eval.quality=true"])
    with pytest.raises(ConfigError, match=r"use \+eval=quality"):
        build_evaluations(cfg)


def test_the_image_model_is_the_unet_config():
    assert OmegaConf.to_container(OmegaConf.load(CONF / "model" / "unet.yaml")) == IMAGE_MODEL


def test_seeds_keep_their_offsets():
    seeds = Seeds(10)
    assert [seeds[name] for name in ("solver", "test_points", "reference_plot", "scale_check", "range_check",
                                     "quality", "classifier", "inpaint_points", "inpaint_report", "fid")] == \
        list(range(10, 20))
    assert set(STREAMS) >= {"pictures", "fid_reference"}
    with pytest.raises(KeyError):
        seeds["nothing"]


def test_the_command_line_checks_take_a_list_group_whole():
    from scoresde.cli.args import check_group_choices, check_override_keys, first_choice

    assert first_choice("eval", "[quality],[quality,ode]") == "[quality]"
    assert first_choice("eval", "[quality,ode]") == "[quality,ode]" and first_choice("solver", "em,pc") == "em"
    check_group_choices(["eval=[quality,ode]", "+eval=elbo"], CONF)
    check_override_keys(translate(["eval=[quality,ode]", "eval.ode.method=rk4", "+eval=elbo", "eval.elbo.draws=8"],
                                  evaluation_names(), notice=False), CONF)
    with pytest.raises(ConfigError, match="eval='odee' is unknown: choose one of classifier, elbo, fd_dinov2, fid"):
        check_group_choices(["eval=[quality,odee]"], CONF)
