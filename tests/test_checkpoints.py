"""Checkpoints know their model: through run.py, a checkpoint samples with its own process and network, and a
run that asks for another one ends in one line naming both values; bugs keep their tracebacks. A checkpoint names
its parts by stable names and builds nothing outside the framework's table unless the reader trusts it."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import scoresde
from scoresde.data import DataSpec
from scoresde.training.checkpoint import read_checkpoint, save_checkpoint, signature
from scoresde.training.names import ALIASES, NAMES, name_of
from sde import CheckpointError
from test_run import SMALL_MLP, run_main as run

ROOT = Path(__file__).resolve().parents[1]

TRAIN = ["sde=subvp", "train.steps=5", "solver=ddim", "solver.steps=5", "sample.num=20", *SMALL_MLP]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 5-step run of the small MLP under the sub-VP process: its checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    proc = run(out, *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return out / "checkpoint.pt"


def one_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_checkpoint_records_its_configuration(trained):
    meta = torch.load(trained, weights_only=True)["meta"]
    assert meta["sde"]["_name_"] == "sde/subvp" and meta["sde"]["beta_max"] == 20.0
    assert meta["model"]["_name_"] == "model/score" and meta["model"]["net"]["_name_"] == "net/mlp"
    assert "_target_" not in str(meta)
    assert meta["model"]["net"]["hidden"] == 64 and meta["model"]["parameterization"] == "x0"
    meta = read_checkpoint(trained)["meta"]
    assert meta["sde"]["_target_"] == "sde.SubVPSDE" and meta["model"]["net"]["_target_"] == "models.MLP"
    assert "_name_" not in str(meta)
    assert meta["data_spec"] == {"shape": [2], "num_classes": None, "levels": None, "value_range": None}


@pytest.mark.slow
def test_sampling_without_sde_or_model_uses_the_checkpoints_own(trained, tmp_path):
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", "solver=ddim", "solver.steps=5", "sample.num=20",
               "sample.max_range=0")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sde"].startswith("SubVPSDE") and metrics["train_steps"] == 5
    first = np.load(trained.parent / "samples.npz")["x"]
    assert np.allclose(np.load(tmp_path / "samples.npz")["x"], first, atol=1e-5)


@pytest.mark.slow
def test_a_run_from_a_checkpoint_samples_as_its_training_run_did_unless_told_otherwise(tmp_path):
    """The solver and sample settings the checkpoint was trained with are a run's defaults (issue 25: a digits
    model fell back to 200-step EM on 2000 samples); a key set on the command line goes on top of them, a solver
    chosen by name replaces them, and fast's fitted grid recipe comes back whole."""
    trained = tmp_path / "trained"
    proc = run(trained, "train.steps=2", "solver=ddim", "solver.steps=7", "sample.num=33", "sample.max_range=0",
               *SMALL_MLP)
    assert proc.returncode == 0, proc.stderr
    ckpt = f"ckpt={trained / 'checkpoint.pt'}"
    for name, overrides, (solver, nfe, num) in [
            ("own", [], ("DDIM", 7, 33)), ("keys", ["solver.steps=4", "sample.num=10"], ("DDIM", 4, 10)),
            ("chosen", ["solver=em", "solver.steps=5"], ("EulerMaruyama", 5, 33))]:
        proc = run(tmp_path / name, ckpt, "train.steps=0", *overrides)
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["solver"].startswith(solver) and metrics["nfe_sample"] == nfe, (name, metrics)
        assert len(np.load(tmp_path / name / "samples.npz")["x"]) == num
    fast = run(tmp_path / "fast", "train.steps=2", "solver=fast", "solver.grid.iterations=2", "solver.grid.pilots=16",
               "solver.grid.teacher_steps=10",
               "sample.num=5", "sample.max_range=0", *SMALL_MLP)
    assert fast.returncode == 0, fast.stderr
    meta = torch.load(tmp_path / "fast" / "checkpoint.pt", weights_only=True)["meta"]
    assert meta["solver"]["grid"]["iterations"] == 2 and "_target_" not in str(meta)


@pytest.mark.parametrize("override, needle", [
    ("sde=vp", "was trained with sde._target_='sde.SubVPSDE' but this run has sde._target_='sde.VPSDE'"),
    pytest.param("model.parameterization=eps", "was trained with model.parameterization='x0' but this run has "
                                   "model.parameterization='eps'", marks=pytest.mark.slow),
    pytest.param("model.sigma_data=0.5", "was trained with model.sigma_data=1.0 but this run has "
                 "model.sigma_data=0.5", marks=pytest.mark.slow),
    pytest.param("model.net.hidden=32", "was trained with model.net.hidden=64 but this run has "
                 "model.net.hidden=32", marks=pytest.mark.slow),
    pytest.param("model=unet", "was trained with model.net._target_='models.MLP' but this run has "
                 "model.net._target_='models.UNet'", marks=pytest.mark.slow),
])
def test_another_process_or_network_is_one_line(trained, tmp_path, override, needle):
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", override, "sample.num=20")
    line = one_line(proc)
    assert needle in line and "ckpt_override=true" in line


@pytest.mark.slow
def test_override_samples_under_another_process(trained, tmp_path):
    """ckpt_override=true: the user takes responsibility; the network still has to fit."""
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", "sde=vp", "ckpt_override=true", "solver=ddim",
               "solver.steps=5", "sample.num=20", "sample.max_range=0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["sde"].startswith("VPSDE")


@pytest.mark.slow
def test_data_of_another_shape_is_one_line(trained, tmp_path):
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", "data=gmm_hd", "data.dim=3", "sample.num=20")
    assert "was trained on data with shape [2]; this data set" in one_line(proc)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_resume_is_one_line(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "partial.pt")
    proc = run(tmp_path / "out", f"ckpt={tmp_path / 'partial.pt'}", "train.steps=10", *SMALL_MLP)
    assert "lacks optimizer: it cannot resume training" in one_line(proc)


@pytest.mark.parametrize("error", ["ValueError", pytest.param("TypeError", marks=pytest.mark.slow)])
def test_a_bug_keeps_its_traceback(tmp_path, error):
    """An exception that is not a ConfigError, raised inside a solver or a constructor, is a bug."""
    (tmp_path / "buggy.py").write_text(textwrap.dedent(f"""
        from solvers import EulerMaruyama

        class Buggy(EulerMaruyama):
            def solve(self, sde, score, x, eps, generator):
                raise {error}("an internal {error}")

        class BuggyInit(EulerMaruyama):
            def __init__(self, **options):
                raise {error}("an internal {error} in a constructor")
    """))
    for target, message in (("buggy.Buggy", f"an internal {error}"),
                            ("buggy.BuggyInit", f"an internal {error} in a constructor")):
        proc = run(tmp_path / "out", "model=oracle", "data=gmm", "solver=em", f"solver._target_={target}",
                   "sample.num=10", cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" in proc.stderr and f"{error}: {message}" in proc.stderr


SMALL = {"sde": {"_target_": "sde.SubVPSDE", "beta_min": 0.1, "beta_max": 20.0, "T": 1.0},
         "model": {"_target_": "models.ScoreModel", "parameterization": "eps",
                   "net": {"_target_": "models.MLP", "_partial_": True, "hidden": 16, "depth": 1, "embed_dim": 8}},
         "data": {"_target_": "scoresde.data.Checkerboard"},
         "data_spec": {"shape": [2], "num_classes": None, "levels": None, "value_range": None}}


def write(path, meta, config=SMALL):
    """A checkpoint of a small untrained network built from ``config``, whose meta is ``meta`` as given."""
    torch.manual_seed(0)
    sde = instantiate(OmegaConf.create(config["sde"]))
    model = instantiate(OmegaConf.create(config["model"]), sde=sde, data=DataSpec(**config["data_spec"]))
    weights = model.state_dict()
    torch.save({"model": weights, "ema": {"shadow": weights}, "step": 3, "signature": signature(model),
                "meta": meta}, path)
    return path


def test_every_name_stands_for_a_class_and_every_alias_for_the_same():
    from hydra._internal.utils import _locate

    for name, path in NAMES.items():
        assert isinstance(_locate(path), type), name
    for alias, name in ALIASES.items():
        assert _locate(alias) is _locate(NAMES[name]), alias


@pytest.mark.parametrize("group", ["sde", "model", "data", "solver"])
def test_every_part_the_configs_can_choose_has_a_name(group):
    """Every ``_target_`` of conf/<group> (nested ones included) is in the table."""
    def targets(node):
        if isinstance(node, dict):
            yield from ([node["_target_"]] if "_target_" in node else [])
            for v in node.values():
                yield from targets(v)
        elif isinstance(node, list):
            for v in node:
                yield from targets(v)

    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        for target in targets(OmegaConf.to_container(OmegaConf.load(path))):
            assert name_of(target) is not None, f"{path.name}: {target}"


def test_names_are_written_and_read_back_as_the_current_targets(tmp_path):
    save_checkpoint(tmp_path / "c.pt", model={}, meta=SMALL)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)["meta"]
    assert raw["sde"] == {"_name_": "sde/subvp", "beta_min": 0.1, "beta_max": 20.0, "T": 1.0}
    assert raw["model"]["net"] == {"_name_": "net/mlp", "_partial_": True, "hidden": 16, "depth": 1, "embed_dim": 8}
    assert raw["data"] == {"_name_": "data/checkerboard"}
    assert read_checkpoint(tmp_path / "c.pt")["meta"] == SMALL


def old_style(meta):
    """Meta as checkpoints wrote it before the move into scoresde: module paths, scoredata.X for data sets."""
    meta = json.loads(json.dumps(meta))
    meta["data"]["_target_"] = meta["data"]["_target_"].replace("scoresde.data.", "scoredata.")
    meta["model"]["net"]["_target_"] = "models.mlp.MLP"
    return meta


def test_a_checkpoint_written_with_module_paths_still_loads(tmp_path):
    path = write(tmp_path / "old.pt", old_style(SMALL))
    assert read_checkpoint(path)["meta"] == SMALL
    pipe = scoresde.load(path, device="cpu")
    assert type(pipe.sde).__name__ == "SubVPSDE" and pipe.step == 3
    assert pipe.sample(10, solver="ddim", steps=3).shape == (10, 2)


@pytest.mark.slow
def test_a_checkpoint_written_with_module_paths_samples_as_before_through_run_py(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    state["meta"] = old_style(read_checkpoint(trained)["meta"])
    torch.save(state, tmp_path / "old.pt")
    proc = run(tmp_path / "out", f"ckpt={tmp_path / 'old.pt'}", "train.steps=0", "solver=ddim", "solver.steps=5",
               "sample.num=20", "sample.max_range=0")
    assert proc.returncode == 0, proc.stderr
    first = np.load(trained.parent / "samples.npz")["x"]
    assert np.allclose(np.load(tmp_path / "out" / "samples.npz")["x"], first, atol=1e-5)


def crafted(tmp_path):
    """The checkpoints of issue 25, each naming a callable that would destroy ``victim`` or write ``marker``."""
    victim, marker, pickle = tmp_path / "victim.pt", tmp_path / "marker", tmp_path / "payload.pkl"
    victim.write_bytes(b"a good checkpoint")
    truncate = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    copy = {"_target_": "shutil.copyfile", "src": "/dev/null", "dst": str(victim)}
    printer = {"_target_": "builtins.print", "_args_": ["payload"],
               "file": {"_target_": "builtins.open", "file": str(pickle), "mode": "w"}}
    loader = {"_target_": "torch.load", "f": str(pickle), "weights_only": False}
    system = {"_target_": "os.system", "command": f"touch {marker}"}
    metas = {
        "open": {**SMALL, "sde": truncate},
        "copyfile": {**SMALL, "sde": copy},
        "two_stage": {**SMALL, "sde": printer, "data": loader},
        "system": {**SMALL, "sde": system},
        "nested": {**SMALL, "model": {**SMALL["model"], "net": truncate}},
        "deep": {**SMALL, "model": {**SMALL["model"], "extra": [{"x": truncate}]}},
        "args": {**SMALL, "sde": {**SMALL["sde"], "_args_": [1]}},
        "recursive": {**SMALL, "model": {**SMALL["model"], "_recursive_": False}},
        "interpolation": {**SMALL, "sde": {**SMALL["sde"], "T": "${oc.env:HOME}"}},
        "partial": {**SMALL, "model": {**SMALL["model"], "net": {**SMALL["model"]["net"], "_partial_": "yes"}}},
        "unknown_name": {**SMALL, "sde": {"_name_": "builtins.open"}},
    }
    return victim, marker, {k: write(tmp_path / f"{k}.pt", v) for k, v in metas.items()}


NEEDLES = {"open": "sde._target_='builtins.open'", "copyfile": "sde._target_='shutil.copyfile'",
           "two_stage": "sde._args_=", "system": "sde._target_='os.system'",
           "nested": "model.net._target_='builtins.open'", "deep": "model.extra.0.x._target_='builtins.open'",
           "args": "sde._args_=[1]", "recursive": "model._recursive_=False", "interpolation": "an interpolation",
           "partial": "model.net._partial_='yes', not a boolean", "unknown_name": "sde._name_='builtins.open'"}


def test_a_checkpoint_naming_a_foreign_callable_builds_nothing(tmp_path):
    victim, marker, paths = crafted(tmp_path)
    for kind, path in paths.items():
        for read in (lambda: scoresde.load(path, device="cpu"), lambda: read_checkpoint(path)):
            with pytest.raises(CheckpointError) as err:
                read()
            message = str(err.value)
            assert "\n" not in message and NEEDLES[kind] in message, message
            if kind != "unknown_name":
                assert "trusted=True" in message and "ckpt_trusted=true" in message
        assert victim.read_bytes() == b"a good checkpoint" and not marker.exists()
        assert not (tmp_path / "payload.pkl").exists()


@pytest.mark.parametrize("kind", ["open", pytest.param("two_stage", marks=pytest.mark.slow),
                                  pytest.param("nested", marks=pytest.mark.slow),
                                  pytest.param("interpolation", marks=pytest.mark.slow)])
def test_run_py_refuses_a_foreign_callable_in_one_line(tmp_path, kind):
    victim, marker, paths = crafted(tmp_path)
    proc = run(tmp_path / "out", f"ckpt={paths[kind]}", "train.steps=0", "sample.num=10")
    assert NEEDLES[kind] in one_line(proc)
    assert victim.read_bytes() == b"a good checkpoint" and not marker.exists()
    assert not (tmp_path / "payload.pkl").exists()


def test_a_users_own_class_loads_only_when_trusted(tmp_path, monkeypatch):
    (tmp_path / "my_process.py").write_text(textwrap.dedent("""
        from sde import SubVPSDE

        class MySDE(SubVPSDE):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {**SMALL, "sde": {**SMALL["sde"], "_target_": "my_process.MySDE"}}
    save_checkpoint(tmp_path / "mine.pt", model={}, meta=config)
    assert torch.load(tmp_path / "mine.pt", weights_only=True)["meta"]["sde"]["_target_"] == "my_process.MySDE"
    path = write(tmp_path / "mine.pt", config, config)
    with pytest.raises(CheckpointError, match="sde._target_='my_process.MySDE', not a part of this framework"):
        scoresde.load(path, device="cpu")
    for trusted in (True, {"my_process.MySDE"}):
        assert type(scoresde.load(path, device="cpu", trusted=trusted).sde).__name__ == "MySDE"
    with pytest.raises(CheckpointError, match="my_process.MySDE"):
        scoresde.load(path, device="cpu", trusted={"my_process.Other"})


@pytest.mark.parametrize("which", ["model", "ema"])
def test_the_network_is_checked_against_the_tensors_not_the_files_signature(tmp_path, which):
    path = write(tmp_path / "c.pt", SMALL)
    state = torch.load(path, weights_only=True)
    weights = dict(state["model"])
    key = next(iter(weights))
    weights[key] = torch.zeros(3, *weights[key].shape)
    if which == "model":
        state["model"] = weights
    else:
        state["ema"] = {"shadow": weights}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"was written for a different model \(first difference: {key}:"):
        scoresde.load(path, device="cpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The 3-step run benchmarks/bad_inputs.py's checkpoint cases edit (its SMALL overrides), made once."""
    from benchmarks.bad_inputs import SMALL

    out = tmp_path_factory.mktemp("tiny") / "trained"
    proc = run(out, "train.steps=3", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return out


MISFITS = {
    "k07": "was written for a different model (first difference: ",
    "k08": "was written for a different model (first difference: ",
    "k09": "was written for a different model (first difference: renamed.",
    "k41": "was written for a different model (first difference: extra:(2,))",
    "k28": "was written for a different model (first difference: net.",
    "k34": "holds meta of type str, not a dict: it is not a checkpoint of this framework",
    "k35": "holds model weights that are not a dict of tensors",
    "k21": "holds step='abc', not a step count (a whole number from 0 to 1,000,000,000)",
    "k22b": "holds step=-5, not a step count",
    "k23": "holds step=1000000000000, not a step count",
    "k33": "error: train.steps=2 is below the step 3 that ckpt=",
    "k24": "holds optimizer state that does not fit this model's 10 parameters in 1 group(s): it cannot resume",
    "k24b": "holds optimizer exp_avg of shape (",
    "k25": "holds a data_generator state of 3 torch.uint8 entries, not a random state (5056 entries): it cannot resume",
    "k26": "holds a torch_rng state of 3 torch.uint8 entries, not a random state (5056 entries): it cannot resume",
    "k36": "holds an EMA update count of 'x', not a count: it cannot resume training",
}


def rundir_case(name):
    from benchmarks.bad_inputs import RUNDIR_CASES

    return next(c for c in RUNDIR_CASES if c[1].split()[0] == name)


MISFITS_FAST = {"k07", "k21"}  # a different model, a step that is not a count


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in MISFITS_FAST else pytest.mark.slow)
                                  for name in MISFITS])
def test_a_checkpoint_that_does_not_fit_is_one_line(tiny_run, tmp_path, name):
    """Each checkpoint case of benchmarks/bad_inputs.py (probe ids k..), through main() in this process."""
    import shutil

    from benchmarks.bad_inputs import probe

    shutil.copytree(tiny_run, tmp_path / "trained")
    got, message, proc = probe(rundir_case(name), tmp_path, lambda out, args, cwd: run(out, *args, cwd=cwd))
    assert MISFITS[name] in one_line(proc) and message == one_line(proc)
    assert not (tmp_path / "out" / "checkpoint.pt").exists() and not (tmp_path / "out" / "samples.npz").exists()


@pytest.mark.parametrize("group, key, value", [("solver", "denoise", "maybe"), ("solver", "steps", -3),
                                               pytest.param("sample", "plot", "maybe", marks=pytest.mark.slow),
                                               pytest.param("sample", "num", 0, marks=pytest.mark.slow),
                                               pytest.param("data", "seed", "abc", marks=pytest.mark.slow)])
def test_a_checkpoints_own_values_are_checked_as_the_command_lines_are(tiny_run, tmp_path, group, key, value):
    """A value the checkpoint supplies (its sampling settings, its data config) is held to the command line's
    rules, whether the value is checked before the parts are built (a boolean) or as they are built (a count):
    one line naming it and the checkpoint, no samples. The same value given on the command line is the user's
    own: its line does not blame the checkpoint."""
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    state["meta"][group][key] = value
    torch.save(state, tmp_path / "edited.pt")
    proc = run(tmp_path / "out", f"ckpt={tmp_path / 'edited.pt'}", "train.steps=0")
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc).startswith(f"error: {group}.{key}={value!r} is invalid")
    assert one_line(proc).endswith(f"(a value ckpt={str(tmp_path / 'edited.pt')!r} holds)")
    assert not (tmp_path / "out" / "samples.npz").exists()
    if group == "data":
        return  # the checkerboard has no seed to set on the command line
    mine = run(tmp_path / "mine", f"ckpt={tiny_run}", "train.steps=0", f"{group}.{key}={value}")
    assert one_line(mine).startswith(f"error: {group}.{key}={value!r} is invalid") and "holds)" not in mine.stderr


@pytest.mark.parametrize("step", ["abc", -5, 10**12, 2.5, True])
def test_scoresde_load_refuses_a_step_that_is_not_a_count(tiny_run, tmp_path, step):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    state["step"] = step
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError) as error:
        scoresde.load(tmp_path / "edited.pt", device="cpu")
    (line,) = str(error.value).splitlines()
    assert line == (f"ckpt={str(tmp_path / 'edited.pt')!r} holds step={step!r}, not a step count (a whole number "
                    "from 0 to 1,000,000,000): it is not a checkpoint of a training run")


def test_resuming_at_the_checkpoints_own_step_says_nothing_is_trained(tiny_run, tmp_path):
    from benchmarks.bad_inputs import SMALL

    proc = run(tmp_path / "out", f"ckpt={tiny_run}", "train.steps=3", *SMALL)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert warned == [f"warning: ckpt={str(tiny_run / 'checkpoint.pt')!r} has reached train.steps=3 already: nothing "
                      "is trained, it is sampled as it is"]


def test_a_checkpoints_solver_serves_only_the_task_it_sampled_for(tiny_run, tmp_path):
    """The 3-step run sampled with DDIM (5 steps): a run from it that samples does too; one that inpaints takes
    the inpainting task's own solver (Euler–Maruyama), as it would without ckpt=."""
    sampled = run(tmp_path / "sample", f"ckpt={tiny_run}", "train.steps=0")
    assert sampled.returncode == 0, sampled.stderr
    assert json.loads((tmp_path / "sample" / "metrics.json").read_text())["nfe_sample"] == 5
    inpainted = run(tmp_path / "inpaint", f"ckpt={tiny_run}", "train.steps=0", "task=inpaint", "mask=coordinates",
                    "mask.coordinates=[0]", "solver.steps=7", "task.num=4", "task.completions=1")
    assert inpainted.returncode == 0, inpainted.stderr
    metrics = json.loads((tmp_path / "inpaint" / "metrics.json").read_text())
    assert metrics["solver"].startswith("EulerMaruyama(") and metrics["nfe_inpaint"] == 7
