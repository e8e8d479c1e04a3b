"""Distillation runs: killed with SIGKILL through run.py (the process is the subject), the run from its last
checkpoint continues exactly, its weights and EMA after S + 20 steps bit-equal to an uninterrupted run's; the
student starts as a copy of a teacher run of its own network (distill.init)."""
import pytest
import torch

from sde.errors import ConfigError
from test_distill import build_distill
from test_run import command, kill_after_first_checkpoint, run_main

ARGS = ["experiment=distill", "distill.method=consistency", "distill.steps=2", "distill.intervals=8",
        "train.batch_size=64", "train.warmup=2", "train.schedule=constant", "train.ckpt_every=20",
        "train.log_every=10", "model.net.hidden=16", "model.net.depth=1", "model.net.embed_dim=8", "sample.num=64",
        "sample.plot=false", "eval=[mixture]", "progress=false", "threads=1"]


def weights(path):
    state = torch.load(path, weights_only=True)
    return state["step"], state["model"], state["ema"]["shadow"]


@pytest.mark.slow
def test_killed_distillation_resumes_exactly(tmp_path):
    first = tmp_path / "first"
    ckpt = kill_after_first_checkpoint(command(first, *ARGS, "train.steps=100000"), first, tmp_path)
    step, _, _ = weights(ckpt)
    assert step >= 20 and step % 20 == 0
    resumed = run_main(tmp_path / "resumed", *ARGS, f"ckpt={ckpt}", f"train.steps={step + 20}")
    whole = run_main(tmp_path / "whole", *ARGS, f"train.steps={step + 20}")
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr + whole.stderr
    (s1, model1, ema1), (s2, model2, ema2) = (weights(tmp_path / name / "checkpoint.pt") for name in ("resumed", "whole"))
    assert s1 == s2 == step + 20
    logged = [row.split(",")[0] for row in (tmp_path / "resumed" / "train_log.csv").read_text().splitlines()[1:]]
    assert logged == [str(step + 10), str(step + 20)]  # the resumed run took only the last 20 steps
    for mine, theirs in ((model1, model2), (ema1, ema2)):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_the_student_starts_as_a_copy_of_a_teacher_run_of_its_network(tmp_path):
    """distill.init=auto: the next round of progressive distillation (the same 8-wide network, x0) starts from the
    teacher's weights; from the oracle, or with init=none, the student is fresh; init=teacher on another network is
    one line."""
    import scoresde

    progressive_run = tmp_path / "round1"
    done = run_main(progressive_run, *ARGS, "distill.method=progressive", "distill.steps=4", "distill.substeps=2",
                    "model.net.hidden=8", "train.steps=2")
    assert done.returncode == 0, done.stderr
    teacher = scoresde.load(progressive_run).model.state_dict()
    common = [f"teacher={progressive_run}", "distill.method=progressive", "distill.steps=2", "model.net.hidden=8",
              "model.net.depth=1", "model.net.embed_dim=8"]
    copied = build_distill(tmp_path / "auto", *common).model.state_dict()
    assert copied.keys() == teacher.keys() and all(torch.equal(copied[k], teacher[k]) for k in teacher)
    fresh = build_distill(tmp_path / "none", *common, "distill.init=none").model.state_dict()
    assert not all(torch.equal(fresh[k], teacher[k]) for k in teacher)
    oracle = build_distill(tmp_path / "oracle", *common[3:], "distill.init=auto").model.state_dict()
    assert not all(torch.equal(oracle[k], teacher[k]) for k in teacher)
    with pytest.raises(ConfigError) as e:
        build_distill(tmp_path / "bad", *common[:3], "model.net.hidden=16", *common[4:], "distill.init=teacher")
    assert "distill.init=teacher copies the teacher's weights" in str(e.value) and "\n" not in str(e.value)
