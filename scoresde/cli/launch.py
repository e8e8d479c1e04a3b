"""A run started as one task of several by SLURM (``srun``, or an sbatch job through hydra-submitit-launcher with
``tasks_per_node`` tasks) or by submitit's local executor, given the environment torchrun gives its processes,
so that the distributed setup (scoresde.training.distributed) sees one process group either way."""
import os
import re

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def first_host(nodelist):
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu1' → 'gpu07', 'a1,b2' → 'a1',
    'n[3]-ib' → 'n3-ib'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", nodelist.strip())
    if not match:
        raise ValueError(f"not a SLURM node list: {nodelist!r}")
    head, ranges, tail = match.groups()
    return head + (re.split(r"[-,]", ranges)[0] if ranges else "") + (tail or "")


def port_for(job_id):
    """A port shared by the tasks of one job, from its id: 20000 + id mod 20000 (above the usual ephemeral
    range's start on most clusters, and different for jobs that run at once)."""
    return str(20000 + int(re.sub(r"\D", "", str(job_id)) or 0) % 20000)


def task_environment(environ):
    """The torchrun variables (TORCHRUN) of a process started as one task of several, from SLURM's own
    (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, SLURM_STEP_TASKS_PER_NODE, SLURM_STEP_NODELIST: a job
    step's, so that a batch script's one process is not taken for one of many) or submitit's local executor's
    (SUBMITIT_LOCAL_GLOBALID, SUBMITIT_LOCAL_NTASKS, SUBMITIT_LOCAL_LOCALID, on 127.0.0.1); MASTER_ADDR and
    MASTER_PORT as the environment gives them, else the first host of the step and a port from the job id.
    Nothing when torchrun set them already, or for a single task."""
    if "RANK" in environ or "WORLD_SIZE" in environ:
        return {}
    if int(environ.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        tasks = int(environ["SLURM_STEP_NUM_TASKS"])
        per_node = re.match(r"\d+", environ.get("SLURM_STEP_TASKS_PER_NODE", str(tasks)))
        found = dict(RANK=environ["SLURM_PROCID"], WORLD_SIZE=str(tasks), LOCAL_RANK=environ["SLURM_LOCALID"],
                     LOCAL_WORLD_SIZE=per_node.group(0) if per_node else str(tasks),
                     MASTER_ADDR=first_host(environ.get("SLURM_STEP_NODELIST", environ.get("SLURM_JOB_NODELIST",
                                                                                         "localhost"))),
                     MASTER_PORT=port_for(environ.get("SLURM_JOB_ID", 0)))
    elif int(environ.get("SUBMITIT_LOCAL_NTASKS", 1)) > 1:
        tasks = environ["SUBMITIT_LOCAL_NTASKS"]
        found = dict(RANK=environ["SUBMITIT_LOCAL_GLOBALID"], WORLD_SIZE=tasks,
                     LOCAL_RANK=environ["SUBMITIT_LOCAL_LOCALID"], LOCAL_WORLD_SIZE=tasks, MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=port_for(environ.get("SUBMITIT_LOCAL_JOB_ID", 0)))
    else:
        return {}
    return {**found, **{k: environ[k] for k in ("MASTER_ADDR", "MASTER_PORT") if k in environ}}


def as_torchrun():
    """Puts task_environment's variables into this process's environment; returns them."""
    found = task_environment(os.environ)
    os.environ.update(found)
    return found
