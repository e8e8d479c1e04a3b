"""Tasks that SLURM or submitit start get torchrun's environment (scoresde.cli.launch); Hydra's submitit
launchers compose with run.py, and submitit's local executor runs a sweep of run.py (slow)."""
import json
from pathlib import Path

import pytest

from scoresde.cli.launch import first_host, port_for, task_environment
from scoresde.cli.values import check_command_line
from scoresde.paths import config_dir
from sde.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

SRUN = {"SLURM_JOB_ID": "123456", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_a_slurm_task_gets_torchruns_variables():
    """Task 5 of 8 (2 nodes × 4): rank 5 of 8, local rank 1 of 4, the step's first node and a port of the job."""
    assert task_environment(SRUN) == dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4",
                                          MASTER_ADDR="gpu07", MASTER_PORT=str(20000 + 123456 % 20000))
    given = task_environment({**SRUN, "MASTER_ADDR": "head", "MASTER_PORT": "29500"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"], given["RANK"]) == ("head", "29500", "5")


def test_a_process_that_is_not_one_of_several_tasks_is_left_alone():
    """torchrun's own variables win; a batch script's one process (no job step of several tasks) and a single
    task are plain runs; outside SLURM nothing is set."""
    assert task_environment({**SRUN, "RANK": "0", "WORLD_SIZE": "2"}) == {}
    batch = {k: v for k, v in SRUN.items() if not k.startswith("SLURM_STEP")}
    assert task_environment(batch) == {}
    assert task_environment({**SRUN, "SLURM_STEP_NUM_TASKS": "1"}) == {}
    assert task_environment({}) == {}


def test_a_submitit_local_task_gets_torchruns_variables():
    local = {"SUBMITIT_LOCAL_JOB_ID": "4242", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1",
             "SUBMITIT_LOCAL_LOCALID": "1"}
    assert task_environment(local) == dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(20000 + 4242))
    assert task_environment({**local, "SUBMITIT_LOCAL_NTASKS": "1"}) == {}


def test_the_first_host_of_a_node_list():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("a1,b2") == "a1"
    assert first_host("n[3]-ib") == "n3-ib"
    assert first_host("node12") == "node12"
    assert first_host("c[100,090-099]") == "c100"
    assert port_for("77_3") == port_for(773) == str(20773)


def test_the_slurm_launcher_composes_with_run_py():
    """hydra/launcher=submitit_slurm with one task per GPU composes with the run's config and passes the command
    line's checks; a launcher that is not there is refused in one line naming the ones that are."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    argv = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600",
            "experiment=digits", "train.batch_size=512", "seed=0,1"]
    assert check_command_line(argv, config_dir()) == argv
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=argv[1:-1] + ["seed=1"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.submitit_folder.endswith("/.submitit/%j") and launcher.submitit_folder.startswith("multirun/")
    assert cfg.train.batch_size == 512 and cfg.seed == 1
    with pytest.raises(ConfigError, match=r"^hydra/launcher=slurm is not available: hydra/launcher offers basic, "
                                          r"submitit_local, submitit_slurm$"):
        check_command_line(["hydra/launcher=slurm"], config_dir())


@pytest.mark.slow
def test_submitit_local_runs_a_sweep_of_two_jobs(tmp_path, monkeypatch):
    """python run.py -m hydra/launcher=submitit_local over two solver step counts of the exact mixture score: two
    jobs, each run in its own process by submitit, each its run directory with metrics.json (its NFE the run's
    steps), and the sweep's summary.md with a row for each. The command line runs in this process (run_main):
    the jobs' processes are the subject."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from test_run import run_main

    sweep = tmp_path / "sweep"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    done = run_main(tmp_path / "run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=2",
                    "model=oracle", "data=gmm", "solver=em", "solver.steps=5,6", "sample.num=50", "eval=[quality]",
                    "device=cpu", "threads=1", "progress=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for job, steps in (("0", 5), ("1", 6)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["nfe_sample"] == steps and "processes" not in metrics
    assert len(list((sweep / ".submitit").glob("*/*_0_log.out"))) == 2
    rows = [r for r in (sweep / "summary.md").read_text().splitlines() if r.startswith("| 0 ") or r.startswith("| 1 ")]
    assert len(rows) == 2 and "solver.steps=5" in rows[0] and "solver.steps=6" in rows[1]
