"""The stable names of the parts a checkpoint may name, and the classes they stand for.

A checkpoint's metadata names each part by ``_name_`` (``"sde/vp"``), never by a module path, so moving a class
changes this table and no checkpoint. Reading maps a name, or the ``_target_`` path of a checkpoint written
before names existed, through this table alone: nothing outside it is imported or built from a file.
"""
from sde.errors import CheckpointError

NAMES = {
    "sde/vp": "sde.VPSDE",
    "sde/subvp": "sde.SubVPSDE",
    "sde/ve": "sde.VESDE",
    "sde/cosine": "sde.CosineVPSDE",
    "sde/rf": "sde.RectifiedFlow",
    "model/score": "models.ScoreModel",
    "model/oracle": "models.MixtureScore",
    "model/diffusers": "models.pretrained.DiffusersModel",
    "net/mlp": "models.MLP",
    "net/unet": "models.UNet",
    "data/gmm": "scoresde.data.GaussianMixture",
    "data/gmm_hd": "scoresde.data.RandomMixture",
    "data/checkerboard": "scoresde.data.Checkerboard",
    "data/eight_gaussians": "scoresde.data.EightGaussians",
    "data/moons": "scoresde.data.Moons",
    "data/rings": "scoresde.data.Rings",
    "data/swissroll": "scoresde.data.SwissRoll",
    "data/digits": "scoresde.data.Digits",
    "data/cifar10": "scoresde.data.Cifar10",
    "data/cifar100": "scoresde.data.Cifar100",
    "data/folder": "scoresde.data.ImageFolder",
    "data/array": "scoresde.data.ArrayFile",
    "solver/em": "solvers.EulerMaruyama",
    "solver/pc": "solvers.PredictorCorrector",
    "solver/ode": "solvers.ProbabilityFlowODE",
    "solver/adaptive": "solvers.adaptive.AdaptiveSDE",
    "solver/ddim": "solvers.deterministic.DDIM",
    "solver/dpm": "solvers.deterministic.DPMSolver",
    "solver/heun": "solvers.deterministic.Heun",
    "solver/consistency": "solvers.distilled.ConsistencySampler",
    "solver/sde_dpm": "solvers.stochastic.SDEDPMSolver",
    "grid/fit": "solvers.fitting.FitGrid",
    "grid/tune": "solvers.fitting.TuneGrid",
    "grid/floored_logsnr": "solvers.grids.FlooredLogSNR",
    "grid/fixed": "solvers.grids.FixedTimes",
    "grid/karras": "solvers.grids.Karras",
    "grid/uniform_logsnr": "solvers.grids.UniformLogSNR",
    "grid/uniform_time": "solvers.grids.UniformTime",
}

ALIASES = {
    "sde.processes.VPSDE": "sde/vp",
    "sde.processes.SubVPSDE": "sde/subvp",
    "sde.processes.VESDE": "sde/ve",
    "sde.processes.CosineVPSDE": "sde/cosine",
    "sde.processes.RectifiedFlow": "sde/rf",
    "models.wrapper.ScoreModel": "model/score",
    "models.oracle.MixtureScore": "model/oracle",
    "models.mlp.MLP": "net/mlp",
    "models.unet.UNet": "net/unet",
    "scoresde.data.mixture.GaussianMixture": "data/gmm",
    "scoresde.data.mixture.RandomMixture": "data/gmm_hd",
    "scoresde.data.toys.Checkerboard": "data/checkerboard",
    "scoresde.data.toys.EightGaussians": "data/eight_gaussians",
    "scoresde.data.toys.Moons": "data/moons",
    "scoresde.data.toys.Rings": "data/rings",
    "scoresde.data.toys.SwissRoll": "data/swissroll",
    "scoresde.data.files.Digits": "data/digits",
    "scoresde.data.cifar.Cifar10": "data/cifar10",
    "scoresde.data.cifar.Cifar100": "data/cifar100",
    "scoresde.data.files.ImageFolder": "data/folder",
    "scoresde.data.files.ArrayFile": "data/array",
}
"""Other spellings of a table entry's path (its defining module) that a configuration may have used."""

MOVED = {"scoredata.": "scoresde.data.", "training.": "scoresde.training.", "evaluation.": "scoresde.evaluation.",
         "solvers.fast.": "solvers.deterministic."}
"""Module prefixes that older checkpoints name (before the single ``scoresde`` package and the solvers' modules
by what they hold), and where those modules are now."""

SPECIAL = {"_target_", "_name_", "_partial_"}
"""The keys of Hydra's that a checkpoint's metadata may hold: a target, its stable name, a partial flag."""

_BY_PATH = {**{path: name for name, path in NAMES.items()}, **ALIASES}


def name_of(target):
    """The stable name of a ``_target_`` path (current, an alias, or one under a module that has moved), or None
    when the table does not hold it."""
    if not isinstance(target, str):
        return None
    for old, new in MOVED.items():
        if target.startswith(old):
            target = new + target[len(old):]
            break
    return _BY_PATH.get(target)


def all_named(node):
    """Whether every ``_target_`` in ``node`` is a part the table holds (so that any reader builds it)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        return (target is None or name_of(target) is not None) and all(all_named(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return all(all_named(v) for v in node)
    return True


def named(meta):
    """Metadata to write: each ``_target_`` the table holds replaced by its ``_name_``; one it does not hold (a
    user's own class) is kept as a path, which only a trusted reader builds."""
    if isinstance(meta, dict):
        name = name_of(meta.get("_target_"))
        out = {k: named(v) for k, v in meta.items() if not (name and k == "_target_")}
        return {"_name_": name, **out} if name else out
    if isinstance(meta, (list, tuple)):
        return [named(v) for v in meta]
    return meta


def resolved(meta, path, trusted=False):
    """Read metadata with every ``_name_`` and ``_target_`` checked against the table and written as the current
    ``_target_`` path. Unless ``trusted`` (True, or a collection of ``_target_`` paths to allow), a target
    the table does not hold, a Hydra key other than ``_target_``/``_name_``/``_partial_``, a non-boolean
    ``_partial_`` or an interpolation (``${...}``) anywhere in it raises a CheckpointError naming it."""
    return _resolved(meta, path, trusted, ())


def _resolved(node, path, trusted, where):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if isinstance(k, str) and k.startswith("_") and k.endswith("_") and k not in SPECIAL:
                _refuse(path, where + (k,), "a Hydra key that a checkpoint may not hold", trusted, v)
            out[k] = _resolved(v, path, trusted, where + (str(k),))
        if "_partial_" in out and not isinstance(out["_partial_"], bool):
            _refuse(path, where + ("_partial_",), "not a boolean", trusted, out["_partial_"])
        if "_name_" in out:
            name = out.pop("_name_")
            if name not in NAMES:
                raise CheckpointError(f"ckpt={str(path)!r} names {_key(where + ('_name_',))}={name!r}, which is not "
                                      f"a part of this framework (known: {', '.join(sorted(NAMES))})", "ckpt")
            out = {"_target_": NAMES[name], **{k: v for k, v in out.items() if k != "_target_"}}
        elif "_target_" in out:
            name = name_of(out["_target_"])
            if name is not None:
                out["_target_"] = NAMES[name]
            else:
                _refuse(path, where + ("_target_",), "not a part of this framework", trusted, out["_target_"])
        return out
    if isinstance(node, (list, tuple)):
        return [_resolved(v, path, trusted, where + (str(i),)) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        _refuse(path, where, "an interpolation", trusted, node)
    return node


def _key(where):
    return ".".join(where) or "meta"


def _refuse(path, where, why, trusted, value):
    if trusted is True or (where[-1:] == ("_target_",) and isinstance(trusted, (set, frozenset, list, tuple))
                           and value in trusted):
        return
    raise CheckpointError(f"ckpt={str(path)!r} names {_key(where)}={value!r}, {why}: a checkpoint is built only from "
                          f"this framework's own parts; if you trust the file and its author, load it with "
                          f"trusted=True (scoresde.load) or ckpt_trusted=true (run.py)", "ckpt")
