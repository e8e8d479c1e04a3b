"""A newcomer's first hour, through run.py: a header and progress bars, help that lists the choices, images
that get a network able to serve them, and results that cannot be silently wrong. Runs in this process
(run_job) unless the process is the subject."""
import json
import os
import subprocess
import sys
import time

import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scoresde.cli.main import compose, main
from scoresde.paths import config_dir
from sde.errors import ConfigError, ConfigWarning
from test_run import SMALL_MLP, run_job, run_job_with_edited_samples, run_main

ORACLE = ["model=oracle", "data=gmm", "solver=ddim", "solver.steps=5", "sample.num=50"]


def lines_of(text):
    return [line for line in text.splitlines() if line.strip()]


def test_help_lists_groups_options_and_commented_run_options(capsys):
    with pytest.raises(SystemExit) as end:
        main(["--help"])
    assert end.value.code == 0
    stdout = capsys.readouterr().out
    for needle in ("solver=", "  dpm ", "DPM-Solver++", "data=", "  digits ", "train:", "steps: 10000",
                   "# total optimizer steps", "eval:", "task=", "  inpaint ", "eval=", "  ode "):
        assert needle in stdout, needle


def test_help_gives_each_option_a_column_whole_sentences_and_every_solver_option(capsys):
    """Each group's options in a column as wide as the longest name, each with the first whole sentence of its
    file's comment (wrapped, never cut); each solver's own keys (solver.steps, ...) listed under it."""
    with pytest.raises(SystemExit):
        main(["--help"])
    stdout = capsys.readouterr().out
    blocks = {}
    for block in stdout.split("\n\n"):
        head, *rows = block.splitlines()
        if head.endswith(")") and "=   (" in head:
            blocks[head.split("=")[0]] = rows
    assert set(blocks) == {"sde", "solver", "model", "data", "task", "eval", "mask", "experiment"}
    for group, rows in blocks.items():
        paths = sorted((config_dir() / group).glob("*.yaml"))
        width = 2 + max(len(p.stem) for p in paths) + 2
        starts = [i for i, row in enumerate(rows) if row[2] != " "]
        assert [rows[i].split()[0] for i in starts] == [p.stem for p in paths], group
        for i, path in zip(starts, paths):
            end = next((j for j in starts if j > i), len(rows))
            assert all(row[:width].strip() in ("", path.stem) for row in rows[i:end]), rows[i]
            text = " ".join(row[width:].strip() for row in rows[i:end])
            comment = " ".join(ln.lstrip("#").strip() for ln in path.read_text().splitlines()
                               if ln.startswith("#") and "@package" not in ln)
            assert comment.startswith(text), (path.name, text)
            rest = comment[len(text):]
            assert rest == "" or (rest.startswith(". ") and rest[2:3].isupper() or rest[2:3] in "`("), (path.name, rest)
    for path in sorted((config_dir() / "solver").glob("*.yaml")):
        for key in OmegaConf.load(path):
            if key != "_target_":
                assert f"solver.{key}" in stdout.split("solver options")[1].split("run options")[0], (path.stem, key)


@pytest.mark.slow
def test_header_and_progress_bars(tmp_path, capsys):
    run_job(tmp_path, *ORACLE, "likelihood=true", "eval.num=20", "progress=true")
    captured = capsys.readouterr()
    header = captured.out.splitlines()[:6]
    assert header[0] == f"run {tmp_path}"
    assert [line.split()[0] for line in header[1:]] == ["data", "model", "process", "solver", "device"]
    assert "sample:" in captured.err and "likelihood:" in captured.err and "evals" in captured.err


@pytest.mark.slow
def test_images_with_the_default_model_get_the_unet(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_job(tmp_path, "data=digits", "train.steps=1", "train.batch_size=4", "train.progress=false",
                          "solver=ddim", "solver.steps=2", "sample.num=4", "sample.max_range=0")
    told = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(told) == 1 and "model=unet chosen" in told[0]
    stdout = capsys.readouterr().out
    assert "(1," in stdout and "parameters)" in stdout
    assert metrics["train_steps"] == 1


@pytest.mark.slow
def test_a_vector_network_on_images_kept_when_asked_and_a_unet_on_vectors_refused(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_job(tmp_path / "a", "data=digits", "model=mlp", *SMALL_MLP, "train.steps=1", "train.batch_size=4",
                "solver=ddim", "solver.steps=2", "sample.num=4", "sample.max_range=0")
    assert not [w for w in caught if issubclass(w.category, ConfigWarning)]
    proc = run_main(tmp_path / "b", "model=unet", "train.steps=1")
    assert proc.returncode == 2 and lines_of(proc.stderr) == [
        "error: model.net.shape=(2,) is invalid: expected (C, H, W) for a U-Net (vectors need the MLP)"]


def test_a_coarse_likelihood_is_refused_not_reported(tmp_path):
    with pytest.raises(ConfigError) as error:
        run_job(tmp_path, *ORACLE, "likelihood=true", "eval.num=200", "eval.ode.method=rk4", "eval.ode.steps=2")
    (line,) = str(error.value).splitlines()
    assert line.startswith("eval.ode.steps=2 is too coarse for eval.ode.method='rk4' on this model")
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_samples_far_outside_the_data_are_warned_about_counted_and_kept(tmp_path, monkeypatch):
    with pytest.warns(ConfigWarning) as caught:
        metrics = run_job_with_edited_samples(tmp_path, monkeypatch, "x[3] = 5800.0")
    (line,) = [str(w.message) for w in caught if "samples lie beyond" in str(w.message)]
    assert "1 of 10 samples lie beyond 10 times the data's largest magnitude" in line and "\n" not in line
    assert "sample.max_range=0 skips this check" in line
    x = np.load(tmp_path / "out" / "samples.npz")["x"]
    assert x.shape == (10, 2) and x[3].tolist() == [5800.0, 5800.0]
    assert metrics["samples_out_of_range"] == 1
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["samples_out_of_range"] == 1


@pytest.mark.slow
def test_image_grid_shows_real_images(tmp_path):
    run_job(tmp_path, "data=digits", "model=unet", "model.net.channels=8", "model.net.multipliers=[1]",
            "model.net.attention_resolutions=[]", "model.net.num_res_blocks=1", "model.net.groups=4",
            "train.steps=1", "train.batch_size=4", "train.progress=false", "solver=ddim", "solver.steps=2",
            "sample.num=16", "sample.max_range=0")
    assert (tmp_path / "samples.png").stat().st_size > 1000


def test_image_grid_puts_a_row_of_real_images_above_the_samples(tmp_path):
    from PIL import Image

    from scoresde.evaluation import plot_samples

    plot_samples(-np.ones((16, 1, 8, 8)), tmp_path / "grid.png", np.ones((40, 1, 8, 8)), value_range=(-1, 1))
    picture = np.asarray(Image.open(tmp_path / "grid.png").convert("L"), dtype=float)
    band = ((picture > 100) & (picture < 155)).mean(1) > 0.5  # the grey band between real images and samples
    white = (picture > 240).mean(1) > 0.5  # rows through the real (white) images
    black = (picture < 15).mean(1) > 0.3  # rows through the (black) samples
    assert band.any() and white.any() and black.any()
    assert white.nonzero()[0][0] < band.nonzero()[0][0] < black.nonzero()[0][0]


@pytest.mark.slow
def test_a_sweep_over_solvers_trains_once_and_writes_a_summary(tmp_path):
    proc = run_main(tmp_path / "run", "-m", f"hydra.sweep.dir={tmp_path}", "solver=em,ddim,dpm", "solver.steps=10",
                    "train.steps=30", "sample.num=100", "threads=1", *SMALL_MLP)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / ".trained").glob("*/checkpoint.pt"))) == 1
    metrics = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(3)]
    assert "train_seconds" in metrics[0] and all("trained_in" in m and "train_seconds" not in m for m in metrics[1:])
    assert [m["train_steps"] for m in metrics] == [30, 30, 30]
    assert metrics[0]["solver"].startswith("EulerMaruyama") and metrics[2]["solver"].startswith("DPMSolver")
    rows = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and "solver=ddim" in rows[2] and "swd" in rows[0]
    columns = [[cell.strip() for cell in row.strip("| ").split(" | ")] for row in rows]
    assert "fid" not in columns[0] and all(any(run[j] for run in columns[1:]) for j in range(len(columns[0])))


def test_an_inpainting_run_prints_its_metrics(tmp_path, capsys):
    metrics = run_job(tmp_path, "model=oracle", "data=gmm", "task=inpaint", "mask=coordinates", "mask.coordinates=[0]",
                      "solver=ddim", "solver.steps=5", "task.num=20")
    out = capsys.readouterr().out
    for key in ("inpaint_rmse", "inpaint_weights_tv", "inpaint_logp_gap_per_dim", "nfe_inpaint"):
        assert key in metrics and f"{key}  " in out, key


def test_threads_are_chosen_and_can_be_set(tmp_path, capsys):
    run_job(tmp_path, *ORACLE, "threads=1")
    assert "(1 threads)" in capsys.readouterr().out
    with pytest.raises(ConfigError) as error:
        run_job(tmp_path, *ORACLE, "threads=0")
    assert str(error.value) == "threads=0 is invalid: expected an integer >= 1"


@pytest.mark.slow
def test_auto_threads_leave_a_core_to_a_busy_process():
    from scoresde.cli import busy_cores, choose_threads

    spin = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n"
    assert 1 <= choose_threads("auto") <= (os.cpu_count() or 1)
    competitor = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        assert busy_cores(1.0) >= 0.6
        assert choose_threads("auto") <= max(1, (os.cpu_count() or 1) - 1)
    finally:
        competitor.kill()
        competitor.wait()


def test_the_digits_preset_composes_a_cpu_sized_image_job():
    cfg, _ = compose(["experiment=digits"])
    assert cfg.data._target_ == "scoresde.data.Digits" and cfg.model.net._target_ == "models.UNet"
    assert cfg.solver._target_ == "solvers.deterministic.DPMSolver" and cfg.solver.steps <= 20
    assert cfg.model.net.channels <= 32 and cfg.train.steps * cfg.train.batch_size <= 400_000
    assert "_target_" in cfg.eval.ode and cfg.eval.num <= 180 and cfg.eval.classifier.required is False
    assert cfg.eval.ode.method == "rk4" and cfg.eval.ode.max_error > 0


@pytest.mark.slow
def test_the_digits_preset_reports_bits_per_dim_and_what_a_classifier_sees(tmp_path, capsys):
    metrics = run_job(tmp_path, "experiment=digits", "model.net.channels=8", "model.net.num_res_blocks=1",
                      "train.steps=2", "train.batch_size=8", "train.progress=false", "solver.steps=3", "sample.num=30",
                      "sample.max_range=0", "eval.num=6", "eval.ode.steps=4", "eval.ode.max_error=0")
    assert metrics["nfe_sample"] == 3 and metrics["bpd"] > 0
    assert metrics["classifier_accuracy"] > 0.95 and metrics["class_score_real"] > 7
    assert 1 <= metrics["class_score"] <= 10 and sum(metrics["class_counts"]) == 30
    assert "class_score" in capsys.readouterr().out


def test_auto_threads_follow_the_work_that_comes_and_goes(monkeypatch):
    """AutoThreads from readings of (busy, total, own) CPU seconds: on 4 cores, 1.5 cores of other work over an
    interval leave 3 threads (2.5 rounded), none leave 4, and a look before the interval changes nothing."""
    from scoresde.cli.threads import AutoThreads

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    now, readings = [0.0], iter([(0, 0, 0), (2.5, 4, 1.0), (3.5, 8, 2.0)])
    threads = torch.get_num_threads()
    try:
        governor = AutoThreads(interval=10, read=lambda: next(readings), clock=lambda: now[0])
        torch.set_num_threads(1)
        assert governor() == 1
        now[0] = 10
        assert governor() == 3 and torch.get_num_threads() == 3
        now[0] = 15
        assert governor() == 3
        now[0] = 20
        assert governor() == 4 and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_auto_threads_give_a_core_to_work_that_starts_during_the_run():
    from scoresde.cli.threads import AutoThreads

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: nothing to give")
    threads = torch.get_num_threads()
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n"
    governor = AutoThreads(interval=0.8)
    competitor = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(1.0)
        assert governor() <= (os.cpu_count() or 1) - 1
    finally:
        competitor.kill()
        competitor.wait()
        torch.set_num_threads(threads)


def test_the_trainer_calls_a_light_callback_after_every_step_and_a_run_looks_at_its_threads(tmp_path, monkeypatch):
    """A callback with needs_model = False is called with the step after each step (no EMA copy); the run's
    trainer is given AutoThreads when threads=auto, and not for a fixed count."""
    from models import MLP, ScoreModel
    from sde import VPSDE
    from scoresde.cli import threads as threads_module
    from scoresde.data import GaussianMixture
    from scoresde.training import DSMLoss, Trainer

    class Steps:
        needs_model = False

        def __init__(self):
            self.seen = []

        def __call__(self, step):
            self.seen.append(step)

    sde, steps = VPSDE(), Steps()
    data = GaussianMixture([[0.0, 0.0], [2.0, 0.0]], [0.5, 0.5])
    model = ScoreModel(MLP(shape=(2,), hidden=8, depth=1, embed_dim=8), sde)
    Trainer(steps=5, batch_size=8, ckpt_every=10**6, progress=False).fit(model, DSMLoss(), sde, data, tmp_path, "cpu",
                                                                         callbacks=[steps])
    assert steps.seen == [1, 2, 3, 4, 5]
    made = []
    monkeypatch.setattr(threads_module.AutoThreads, "__call__", lambda self, step: made.append(step))
    run_job(tmp_path / "auto", *ORACLE[:2], "model=mlp", "train.steps=3", "train.progress=false", "solver=ddim",
            "solver.steps=2", "sample.num=10", "sample.max_range=0", "threads=auto")
    assert made == [1, 2, 3]
    run_job(tmp_path / "fixed", *ORACLE[:2], "model=mlp", "train.steps=3", "train.progress=false", "solver=ddim",
            "solver.steps=2", "sample.num=10", "sample.max_range=0", "threads=1")
    assert made == [1, 2, 3]
