"""Checkpoints: written atomically (a temporary file, then a rename), read with weights_only=True."""
import os
from pathlib import Path

import torch


def signature(model):
    """A string naming every parameter and buffer with its shape: two models match when theirs are equal."""
    return ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())


def save_checkpoint(path, **state):
    """torch.save to PATH.tmp, flush to disk, then rename over PATH: a crash leaves the old file whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, model):
    """The checkpoint's dict, after checking it was written for a model of ``model``'s structure."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ValueError(f"ckpt={str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported in one line
        raise ValueError(f"ckpt={str(path)!r} cannot be read as a checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"ckpt={str(path)!r} is not a checkpoint of this framework")
    mine, theirs = signature(model), state.get("signature", "")
    if mine != theirs:
        a, b = set(mine.split(";")), set(theirs.split(";"))
        diff = sorted(b - a)[:1] or sorted(a - b)[:1]
        raise ValueError(f"ckpt={str(path)!r} was written for a different model (first difference: {diff[0]}); "
                         "use the model config it was trained with")
    return state
