"""Checkpoints: written atomically (a temporary file, then a rename), read with weights_only=True."""
import os
import shutil
from pathlib import Path

import torch

from sde.errors import CheckpointError, ConfigError

from .names import named, resolved


def signature(model):
    """A string naming every parameter and buffer with its shape: two models match when theirs are equal."""
    return ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())


def write_atomically(path, write):
    """``write(fh)`` into PATH.tmp.PID (this process's own), flushed to disk, then renamed over PATH: a crash
    leaves the old file whole, and a failed write leaves it whole and no temporary file. A failed write raises
    OSError (torch.save reports a full disk as a RuntimeError, which is raised as an OSError)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            try:
                write(fh)
            except RuntimeError as e:
                raise OSError(f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                              f"{_free_bytes(path.parent)} bytes free there") from e
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _free_bytes(folder):
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return "?"


def write_output(path, write):
    """write_atomically, with a failed write raised as a ConfigError naming the file, why it failed and what to
    do: one line on the command line, the previous file whole."""
    try:
        write_atomically(path, write)
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ConfigError(f"{path} could not be written ({why}); any previous file there is kept whole: free some "
                          "space, or write the run elsewhere") from None


def save_checkpoint(path, **state):
    """torch.save of ``state`` to PATH by write_atomically. A ``meta`` names each part by its stable ``_name_``
    (names.py) instead of a module path."""
    if isinstance(state.get("meta"), dict):
        state["meta"] = named(state["meta"])
    write_atomically(path, lambda fh: torch.save(state, fh))


def read_checkpoint(path, trusted=False):
    """The checkpoint's dict (model, ema, optimizer, step, generator states, signature and ``meta``: what the
    writer said about the model, for example its configuration). Every part the meta names is mapped through
    the table of names.py to its current ``_target_``; unless ``trusted`` (True, or a collection of ``_target_``
    paths to allow, such as a user's own SDE class), anything else raises a CheckpointError naming it."""
    state = _read(path)
    if isinstance(state.get("meta"), dict):
        state["meta"] = resolved(state["meta"], state["path"], trusted)
    elif state.get("meta") is not None:
        raise CheckpointError(f"ckpt={state['path']!r} holds meta of type {type(state['meta']).__name__}, not a "
                              "dict: it is not a checkpoint of this framework", "ckpt")
    return state


def checkpoint_file(path):
    """The checkpoint file ``path`` names: the file itself, or a run directory's checkpoint.pt."""
    path = Path(str(path)).expanduser()
    return path / "checkpoint.pt" if path.is_dir() else path


def _read(path):
    """The checkpoint's dict as written, its meta not yet checked."""
    path = checkpoint_file(path)
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
    return state


def check_fits(state, model):
    """Raises a CheckpointError unless the tensors of ``state`` (its weights, and its EMA weights where it has
    them) have the names and shapes of ``model``'s parameters and buffers; the file's own signature string is
    not taken on trust."""
    mine = signature(model)
    ema = state.get("ema")
    for which, weights in (("model", state.get("model")), ("EMA", ema.get("shadow") if isinstance(ema, dict)
                                                          else None)):
        if weights is None and which == "EMA":
            continue
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise CheckpointError(f"ckpt={state['path']!r} holds {which} weights that are not a dict of tensors: "
                                  "it is not a checkpoint of this framework", "ckpt")
        theirs = ";".join(f"{k}:{tuple(v.shape)}" for k, v in weights.items())
        if set(mine.split(";")) != set(theirs.split(";")):
            a, b = set(mine.split(";")), set(theirs.split(";"))
            diff = sorted(b - a)[:1] or sorted(a - b)[:1]
            raise CheckpointError(f"ckpt={state['path']!r} was written for a different model (first difference: "
                                  f"{diff[0]}); use the model config it was trained with", "ckpt")


def load_checkpoint(path, model):
    """The checkpoint's weights and training state, after checking they were written for a model of ``model``'s
    structure; its meta is left out (the model was built by the caller, not from the file)."""
    state = _read(path)
    state.pop("meta", None)
    check_fits(state, model)
    return state
