"""The trainer for long runs: gradient accumulation, learning-rate schedules, EMA warm-up, the loss read back
only at log points, the CSV log, sample grids, TensorBoard, torch.compile, and the non-finite stop under all of it."""
import csv
import math
import sys
import types

import numpy as np
import pytest
import torch

from helpers import ALL_SDES, mixture_2d
from models import MLP, ScoreModel
from scoresde.data import ImageData
from sde.errors import CheckpointError, ConfigError
from scoresde.training import DSMLoss, Trainer
from scoresde.training import trainer as trainer_module
from scoresde.training.checkpoint import load_checkpoint
from scoresde.training.state import TrainState
from sde.errors import TrainingError
from scoresde.training.trainer import accumulate_gradients
from test_training import NaNAfter

CPU = torch.device("cpu")


def small_model(sde, shape=(2,)):
    torch.manual_seed(0)
    return ScoreModel(MLP(shape=shape, hidden=32, depth=2, embed_dim=16), sde)


def trainer(**kw):
    opts = dict(steps=30, batch_size=32, lr=1e-3, warmup=5, ckpt_every=10, progress=False, seed=3)
    opts.update(kw)
    return Trainer(**opts)


def log_rows(path):
    with open(path / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def fixed_time_loss(model, sde, x0, generator=None):
    """A loss without randomness: ‖s_θ(x0, ½) − x0‖², averaged over the batch."""
    return (model(x0, torch.full((len(x0),), 0.5)) - x0).pow(2).flatten(1).mean(1).mean()


@pytest.mark.parametrize("accumulate", [2, 4])
def test_accumulated_gradient_equals_the_whole_batch_gradient(accumulate):
    sde = ALL_SDES["vp"]()
    x0 = mixture_2d().sample(64, torch.Generator().manual_seed(0))
    grads, losses = [], []
    for k in (1, accumulate):
        model = small_model(sde)
        with torch.no_grad():
            model.net.out.weight.normal_(generator=torch.Generator().manual_seed(1))
        losses.append(accumulate_gradients(model, fixed_time_loss, sde, x0, None, accumulate=k))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-6)


def test_accumulation_trains_and_must_divide_the_batch(tmp_path):
    sde = ALL_SDES["vp"]()
    ema, step = trainer(steps=4, accumulate=4).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU)
    assert step == 4 and all(torch.isfinite(p).all() for p in ema.parameters())
    with pytest.raises(ConfigError, match="batch_size=32 is not a multiple of accumulate=3"):
        trainer(accumulate=3)


def test_cosine_schedule_after_linear_warmup():
    t = Trainer(steps=110, lr=1e-3, warmup=10, schedule="cosine", lr_min=1e-5)
    assert t.learning_rate(0) == pytest.approx(1e-4) and t.learning_rate(4) == pytest.approx(5e-4)
    assert t.learning_rate(9) == pytest.approx(1e-3)
    assert t.learning_rate(59) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # p = 1/2
    assert t.learning_rate(34) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2)
    assert t.learning_rate(109) == pytest.approx(1e-5)
    rates = [t.learning_rate(s) for s in range(9, 110)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    constant = Trainer(steps=110, lr=1e-3, warmup=10)
    assert constant.learning_rate(4) == pytest.approx(5e-4) and constant.learning_rate(109) == 1e-3
    with pytest.raises(ConfigError, match="lr_min=0.01 is invalid: it exceeds lr=0.001"):
        Trainer(lr=1e-3, lr_min=1e-2, schedule="cosine")


def test_ema_warmup_decays_and_the_configured_decay_survives_a_resume(tmp_path):
    sde = ALL_SDES["vp"]()
    state = TrainState(small_model(sde), 1e-3, 0.0, 0.9999, 0, CPU)
    decays = []
    for _ in range(3):
        decays.append(state.ema.current_decay())
        state.ema.update(state.model)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    state.ema.num_updates = 10**6
    assert state.ema.current_decay() == 0.9999
    off = TrainState(small_model(sde), 1e-3, 0.0, 0.9999, 0, CPU, ema_warmup=False)
    assert off.ema.current_decay() == 0.9999
    trainer(steps=10, ema_decay=0.99).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "a", CPU)
    again = TrainState(small_model(sde), 1e-3, 0.0, 0.9999, 0, CPU, ema_warmup=False)
    again.load_state_dict(load_checkpoint(tmp_path / "a" / "checkpoint.pt", again.model))
    assert (again.ema.decay, again.ema.warmup, again.ema.num_updates) == (0.9999, False, 10)


def test_log_rows_hold_the_mean_loss_since_the_previous_row(tmp_path):
    sde = ALL_SDES["vp"]()
    seen = []

    class Recorded(DSMLoss):
        def __call__(self, model, sde, x0, generator=None):
            value = super().__call__(model, sde, x0, generator)
            seen.append(value.detach())
            return value

    trainer(steps=12, log_every=5, ckpt_every=100).fit(small_model(sde), Recorded(), sde, mixture_2d(), tmp_path, CPU)
    rows = log_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [5, 10, 12]
    losses = torch.stack(seen[:12]).tolist()
    for row, (a, b) in zip(rows, [(0, 5), (5, 10), (10, 12)]):
        assert float(row["loss"]) == pytest.approx(sum(losses[a:b]) / (b - a), rel=1e-5)
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[-1]["seconds"]) > 0


def count_host_reads(monkeypatch):
    """Counts read_back calls, and calls from this project's code (not torch's own, such as Adam's CPU step
    counter) of the tensor methods that make the host wait for a value."""
    counts = {"read_back": 0, "sync": 0}
    real = trainer_module.read_back

    def read_back(values):
        counts["read_back"] += 1
        return real(values)

    monkeypatch.setattr(trainer_module, "read_back", read_back)
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        method = getattr(torch.Tensor, name)

        def counted(self, *args, _method=method, **kwargs):
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("torch"):  # ours, not torch's own
                counts["sync"] += 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_the_loss_is_read_back_only_at_log_points(tmp_path, monkeypatch):
    """Steps 1–40 and 1–80 at log_every=20: the host waits for the device at the log points, not at every step."""
    sde = ALL_SDES["vp"]()
    results = []
    for steps in (40, 80):
        counts = count_host_reads(monkeypatch)
        trainer(steps=steps, log_every=20, ckpt_every=10**6).fit(small_model(sde), DSMLoss(), sde, mixture_2d(),
                                                                 tmp_path / str(steps), CPU)
        results.append(dict(counts))
        monkeypatch.undo()
    assert [r["read_back"] for r in results] == [2, 4]
    assert results[1]["sync"] - results[0]["sync"] <= 2 * (results[1]["read_back"] - results[0]["read_back"])


@pytest.mark.parametrize("bad, kept", [(33, 30), (31, 20), (11, None)])
def test_a_nan_between_log_points_stops_with_the_last_good_checkpoint(tmp_path, bad, kept):
    """log_every=25, ckpt_every=10: the NaN is found at the next read-back, named by its step; a checkpoint is written
    only once the step after it has a finite loss, so a NaN right after one keeps the one before."""
    sde = ALL_SDES["vp"]()
    with pytest.raises(TrainingError, match=f"the loss became nan at step {bad}; "
                                            f"{'the last good checkpoint is' if kept else 'no checkpoint was written'}"):
        trainer(steps=60, log_every=25).fit(small_model(sde), NaNAfter(bad), sde, mixture_2d(), tmp_path, CPU)
    if kept is None:
        assert not (tmp_path / "checkpoint.pt").exists()
        return
    state = load_checkpoint(tmp_path / "checkpoint.pt", small_model(sde))
    assert state["step"] == kept
    assert all(torch.isfinite(v).all() for part in (state["model"], state["ema"]["shadow"]) for v in part.values())
    resumed, step = trainer(steps=kept + 5).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "again",
                                                CPU, resume=tmp_path / "checkpoint.pt")
    assert step == kept + 5


def test_sample_grids_are_called_with_the_ema_model_and_leave_the_run_unchanged(tmp_path):
    sde = ALL_SDES["vp"]()
    calls = []

    def on_sample(step, ema_model):
        calls.append((step, ema_model.training))
        torch.randn(1000)  # a callback's draws must not change the run
        (tmp_path / f"samples_step{step}.png").write_bytes(b"")

    plain, _ = trainer(steps=10).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "a", CPU)
    pictured, _ = trainer(steps=10, sample_every=4).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "b",
                                                        CPU, on_sample=on_sample)
    assert calls == [(4, False), (8, False)]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), pictured.state_dict().values()))


def test_image_batches_resume_exactly(tmp_path):
    """8-bit images through the DataLoader with flips: 20 steps straight equal 12 steps, then 8 more resumed."""
    sde = ALL_SDES["vp"]()
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 1, 4, 4), dtype=np.uint8)
    data = ImageData(pixels, flip=True)
    opts = dict(batch_size=16, ckpt_every=6, log_every=4)
    straight, _ = trainer(steps=20, **opts).fit(small_model(sde, (1, 4, 4)), DSMLoss(), sde, data, tmp_path / "a", CPU)
    trainer(steps=12, **opts).fit(small_model(sde, (1, 4, 4)), DSMLoss(), sde, data, tmp_path / "b", CPU)
    resumed, step = trainer(steps=20, **opts).fit(small_model(sde, (1, 4, 4)), DSMLoss(), sde, data, tmp_path / "c",
                                                  CPU, resume=tmp_path / "b" / "checkpoint.pt")
    assert step == 20
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


def test_optimizer_choice_and_its_checkpoint(tmp_path):
    sde = ALL_SDES["vp"]()
    trainer(steps=5, optimizer="adamw", weight_decay=0.01).fit(small_model(sde), DSMLoss(), sde, mixture_2d(),
                                                               tmp_path / "w", CPU)
    state = TrainState(small_model(sde), 1e-3, 0.01, 0.999, 0, CPU, optimizer="adamw")
    assert isinstance(state.optimizer, torch.optim.AdamW)
    adam = TrainState(small_model(sde), 1e-3, 0.0, 0.999, 0, CPU)
    with pytest.raises(CheckpointError, match="was trained with optimizer='adamw'; this run has optimizer='adam'"):
        adam.load_state_dict(load_checkpoint(tmp_path / "w" / "checkpoint.pt", adam.model))


@pytest.mark.parametrize("option, message", [
    (dict(optimizer="sgd"), "optimizer='sgd' is unknown: choose one of adam, adamw"),
    (dict(schedule="linear"), "schedule='linear' is unknown: choose one of constant, cosine"),
    (dict(accumulate=0), "accumulate=0 is invalid"),
    (dict(log_every=0), "log_every=0 is invalid"),
    (dict(sample_every=-1), "sample_every=-1 is invalid"),
    (dict(lr_min=-1.0), "lr_min=-1.0 is invalid"),
    (dict(ema_warmup=1), "ema_warmup=1 is invalid: expected true or false"),
    (dict(channels_last="yes"), "channels_last='yes' is invalid: expected auto or true or false"),
    (dict(compile="yes"), "compile='yes' is invalid: expected true or false"),
    (dict(tensorboard="no"), "tensorboard='no' is invalid"),
])
def test_new_options_are_checked_in_one_line(option, message):
    with pytest.raises(ConfigError, match=message) as info:
        Trainer(**option)
    assert "\n" not in str(info.value)


def test_tensorboard_without_its_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="tensorboard=true needs the tensorboard package: pip install tensorboard"):
        Trainer(tensorboard=True)


def test_tensorboard_gets_the_logged_scalars(tmp_path, monkeypatch):
    scalars = []

    class Writer:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    sde = ALL_SDES["vp"]()
    trainer(steps=10, log_every=5, tensorboard=True).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU)
    assert scalars == [("loss", 5), ("lr", 5), ("loss", 10), ("lr", 10)]


def compile_works():
    try:
        torch.compile(lambda x: x + 1, backend="eager")(torch.zeros(2))
        return True
    except Exception:  # noqa: BLE001 - any failure means this torch cannot compile here
        return False


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")
def test_compile_trains_through_the_compiled_module_and_saves_plain_weights(tmp_path, monkeypatch):
    if not compile_works():
        pytest.skip("torch.compile does not run here")
    compiled = []
    real = torch.compile

    def eager_compile(module, **kw):
        compiled.append(module)
        return real(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    sde = ALL_SDES["vp"]()
    model = small_model(sde)
    ema, step = trainer(steps=3, compile=True).fit(model, DSMLoss(), sde, mixture_2d(), tmp_path, CPU)
    assert compiled == [model] and step == 3
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"])


def test_compile_flag_constructs():
    assert Trainer(compile=True).compile is True


@pytest.mark.slow
def test_channels_last_unet_trains_and_its_checkpoint_loads_anywhere(tmp_path):
    from models import UNet

    sde = ALL_SDES["vp"]()
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)

    def unet():
        torch.manual_seed(0)
        return ScoreModel(UNet((3, 8, 8), channels=8, multipliers=(1,), num_res_blocks=1, attention_resolutions=(),
                               groups=4), sde)

    model = unet()
    trainer(steps=2, batch_size=4, channels_last=True).fit(model, DSMLoss(), sde, ImageData(pixels), tmp_path, CPU)
    assert model.net.inp.weight.is_contiguous(memory_format=torch.channels_last)
    plain = unet()
    plain.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt", plain)["model"])
    x = torch.randn(2, 3, 8, 8)
    t = torch.full((2,), 0.5)
    assert torch.allclose(plain(x, t), model(x, t), atol=1e-5)


@pytest.mark.slow
def test_run_py_writes_sample_grids(tmp_path):
    from test_run import SMALL_MLP, run_main as run

    proc = run(tmp_path, "train.steps=10", "train.sample_every=5", "train.log_every=5", "solver=ddim",
               "solver.steps=5", "sample.num=50", *SMALL_MLP)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "samples_step5.png").stat().st_size > 0 and (tmp_path / "samples_step10.png").exists()
    assert [int(r["step"]) for r in log_rows(tmp_path)] == [5, 10]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_random_state_is_in_the_checkpoint(tmp_path):
    sde = ALL_SDES["vp"]()
    device = torch.device("cuda")
    trainer(steps=2).fit(small_model(sde).to(device), DSMLoss(), sde, mixture_2d(), tmp_path, device)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert "cuda_rng" in state and state["cuda_rng"].dtype == torch.uint8




def test_a_checkpoint_write_that_torch_save_fails_keeps_the_previous_one_whole(tmp_path, monkeypatch):
    """A full disk during torch.save surfaces as a RuntimeError from its zip writer: the run stops with one line
    naming the checkpoint, the previous checkpoint is byte-identical and no temporary is left."""
    sde = ALL_SDES["vp"]()
    trainer(steps=10).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    save = torch.save

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1831680 vs 1831572")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError) as error:
        trainer(steps=20).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU,
                              resume=tmp_path / "checkpoint.pt")
    monkeypatch.setattr(torch, "save", save)
    (line,) = str(error.value).splitlines()
    assert line.startswith(f"checkpoint {tmp_path / 'checkpoint.pt'} at step 20 could not be written ([enforce fail")
    assert "unexpected pos 1831680 vs 1831572; " in line
    assert line.endswith("bytes free there); the previous one is kept whole and resumes")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "train_log.csv"]


def test_a_resumed_run_removes_the_temporaries_of_dead_writers_beside_its_checkpoint(tmp_path):
    """A kill during a write leaves checkpoint.pt.tmp.PID beside the checkpoint; a run resuming it from another
    directory removes those whose process is gone and keeps a live writer's."""
    import os

    sde = ALL_SDES["vp"]()
    trainer(steps=10).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "a", CPU)
    dead, live = tmp_path / "a" / f"checkpoint.pt.tmp.{2**22 + 1}", tmp_path / "a" / f"checkpoint.pt.tmp.{os.getpid()}"
    dead.write_bytes(b"torn")
    live.write_bytes(b"being written")
    trainer(steps=20).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "b", CPU,
                          resume=tmp_path / "a")
    assert not dead.exists() and live.read_bytes() == b"being written"


def test_a_torn_log_row_past_the_checkpoint_is_dropped_on_resume(tmp_path):
    sde = ALL_SDES["vp"]()
    trainer(steps=20, log_every=5).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU)
    with open(tmp_path / "train_log.csv", "a") as fh:
        fh.write("3")
    trainer(steps=30, log_every=5).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU,
                                       resume=tmp_path / "checkpoint.pt")
    rows = log_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert all(r["loss"] and r["lr"] and r["seconds"] for r in rows)


def test_resuming_with_fewer_steps_than_the_checkpoint_has_is_refused(tmp_path):
    sde = ALL_SDES["vp"]()
    trainer(steps=10).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path, CPU)
    with pytest.raises(ConfigError) as error:
        trainer(steps=5).fit(small_model(sde), DSMLoss(), sde, mixture_2d(), tmp_path / "b", CPU,
                             resume=tmp_path / "checkpoint.pt")
    assert str(error.value) == (f"steps=5 is below the step 10 that the checkpoint {tmp_path / 'checkpoint.pt'} has "
                                "reached: nothing would be trained")
