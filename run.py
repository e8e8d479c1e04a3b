"""Compose the config, build the parts, train if asked, run the task (sample, inpaint, colorize) and the
evaluations, write the outputs into the Hydra run directory (scoresde.cli.main.job does each step; the
installed command ``score-sde`` does the same).

    python run.py                                   # train an MLP on a 2-D toy set, sample with SDE-DPM-Solver++
    python run.py sde=vp solver=pc
    python run.py solver=ode likelihood=true        # likelihood=true: shorthand for +eval=ode
    python run.py model=oracle data=gmm solver=ode +eval=ode
    python run.py model=oracle data=gmm task=inpaint mask=random
    python run.py sde._target_=my_module.MySDE
    torchrun --nproc_per_node=4 run.py ...          # DistributedDataParallel over 4 GPUs (train.batch_size global)
"""
from scoresde.cli.main import main, quiet_other_ranks

__all__ = ["main", "quiet_other_ranks"]

if __name__ == "__main__":
    main()
