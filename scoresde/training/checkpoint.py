"""Checkpoints: written atomically (a temporary file, then a rename), read with weights_only=True."""
import os
from pathlib import Path

import torch

from sde.errors import CheckpointError


def signature(model):
    """A string naming every parameter and buffer with its shape: two models match when theirs are equal."""
    return ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())


def save_checkpoint(path, **state):
    """torch.save to PATH.tmp.PID (this process's own), flush to disk, then rename over PATH: a crash leaves the
    old file whole, a failed write leaves no temporary file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path):
    """The checkpoint's dict (model, ema, optimizer, step, generator states, signature and ``meta``: what the
    writer said about the model, for example its configuration)."""
    path = Path(str(path)).expanduser()
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"ckpt={str(path)!r} does not exist", "ckpt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported in one line
        raise CheckpointError(f"ckpt={str(path)!r} cannot be read as a checkpoint ({type(e).__name__})",
                              "ckpt") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"ckpt={str(path)!r} is not a checkpoint of this framework", "ckpt")
    state["path"] = str(path)
    if isinstance(state.get("meta"), dict):
        state["meta"] = _renamed(state["meta"])
    return state


MOVED = {"scoredata.": "scoresde.data.", "training.": "scoresde.training.", "evaluation.": "scoresde.evaluation."}


def _renamed(node):
    """A checkpoint's metadata with the ``_target_`` paths of modules that have since moved into ``scoresde``
    (checkpoints written before the move name ``scoredata.X``) pointing at their new place."""
    if isinstance(node, dict):
        return {k: _moved(v) if k == "_target_" else _renamed(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def _moved(target):
    if isinstance(target, str):
        for old, new in MOVED.items():
            if target.startswith(old):
                return new + target[len(old):]
    return target


def check_fits(state, model):
    """Raises a CheckpointError unless ``state`` was written for a model of ``model``'s structure."""
    mine, theirs = signature(model), state.get("signature", "")
    if mine != theirs:
        a, b = set(mine.split(";")), set(theirs.split(";"))
        diff = sorted(b - a)[:1] or sorted(a - b)[:1]
        raise CheckpointError(f"ckpt={state['path']!r} was written for a different model (first difference: "
                              f"{diff[0]}); use the model config it was trained with", "ckpt")


def load_checkpoint(path, model):
    """The checkpoint's dict, after checking it was written for a model of ``model``'s structure."""
    state = read_checkpoint(path)
    check_fits(state, model)
    return state
