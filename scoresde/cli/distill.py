"""experiment=distill: the teacher (teacher=oracle or a run), the student's sampler and parameterization by method,
and the checks of a teacher against the student, each refused in one line before any training."""
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from models import MixtureScore, ScoreModel
from scoresde.data import GaussianMixture
from scoresde.pipeline import load
from scoresde.training.checkpoint import signature
from scoresde.training.distill import METHODS, check_rectified_flow
from sde.errors import ConfigError, check_choice, check_int, config_scope

from .args import override_keys

PARAMETERIZATION = {"consistency": "consistency", "progressive": "x0", "reflow": "v"}


def student_sampler(method, steps, grid):
    """The solver config a student of ``method`` samples with at ``steps`` evaluations: multistep consistency
    sampling, DDIM on the distillation grid, or Euler in t (reflow: on the rectified flow a DDIM step from t to t'
    is x' = (1 − t') x̂₀ + t' ε̂ = x + (t' − t)(ε̂ − x̂₀), Euler's step of dx/dt = ε̂ − x̂₀). Each is a stepping
    solver, so the student inpaints in its own steps."""
    grid = {"_target_": "solvers.grids.Karras", "rho": 7.0} if grid == "karras" else grid
    if method == "consistency":
        return {"_target_": "solvers.distilled.ConsistencySampler", "steps": steps, "grid": grid, "eps": None}
    if method == "progressive":
        return {"_target_": "solvers.deterministic.DDIM", "steps": steps, "grid": grid, "eps": None, "denoise": False}
    return {"_target_": "solvers.deterministic.DDIM", "steps": steps, "grid": "time", "eps": None, "denoise": False}


def prepare(cfg, overrides):
    """For a run with a ``distill`` node: its method and steps checked, the solver set to the student's sampler and
    the model's parameterization to the method's (each unless the command line sets it). Returns whether the run
    distills."""
    node = cfg.get("distill")
    if node is None:
        if cfg.get("teacher") is not None:
            raise ConfigError(f"teacher={cfg.teacher!r} is read only by experiment=distill", "teacher")
        return False
    with config_scope("distill"):
        method = check_choice("method", node.method, METHODS)
        steps = check_int("steps", node.steps)
    conditional = bool(cfg.model.get("conditional")) or bool(cfg.train.get("cond_drop"))
    if node.get("guidance") and not conditional:
        raise ConfigError(f"distill.guidance={node.guidance} bakes classifier-free guidance into a conditional "
                          "student: add model.conditional=true (labelled data)", "distill.guidance")
    if method == "reflow" and conditional:
        raise ConfigError("distill.method=reflow trains an unconditional flow on its pairs: a conditional student "
                          "is distilled by consistency or progressive", "distill.method")
    choice, keys = override_keys(overrides, "solver")
    if not choice and not keys:
        cfg.solver = OmegaConf.create(student_sampler(method, steps, OmegaConf.to_container(node.grid)
                                                      if OmegaConf.is_config(node.grid) else node.grid))
    _, keys = override_keys(overrides, "model")
    if "parameterization" not in keys and "parameterization" in cfg.model:
        cfg.model.parameterization = PARAMETERIZATION[method]
    return True


def checkpoint_of(spec):
    """A run directory's checkpoint.pt, or the file itself."""
    path = Path(str(spec)).expanduser()
    return path / "checkpoint.pt" if path.is_dir() else path


def load_teacher(cfg, sde, data, device):
    """The teacher ``cfg.teacher`` names, as keyword arguments of the distillation loss: ``teacher`` (a score
    function under the student's process, without gradients) and, for reflow, the teacher's ``teacher_sde`` and
    ``teacher_solver`` (its own sampler) when it is a run; ``substeps`` where distill.substeps is null (32 teacher
    steps per student step from the oracle, the paper's 2 from a trained run)."""
    spec, method, steps = cfg.teacher, cfg.distill.method, cfg.distill.steps
    if method == "reflow":
        check_rectified_flow(sde)
    if spec is None:
        raise ConfigError("experiment=distill needs teacher=oracle (the data's exact score) or teacher=RUN_DIR",
                          "teacher")
    if spec == "oracle":
        if not isinstance(data, GaussianMixture):
            raise ConfigError(f"teacher=oracle needs data with an exact score (data=gmm or data=gmm_hd); {data!r} "
                              "has none: give teacher=RUN_DIR, a model trained on it", "teacher")
        return {"teacher": MixtureScore(sde, data).to(device),
                **({"substeps": 32} if cfg.distill.substeps is None else {})}
    path = checkpoint_of(spec)
    if not path.is_file():
        raise ConfigError(f"teacher={str(spec)!r} does not exist: give oracle, a run directory or its "
                          "checkpoint.pt", "teacher")
    pipe = load(path, device)
    if tuple(pipe.data.shape) != tuple(data.shape):
        raise ConfigError(f"teacher={str(spec)!r} was trained on data of shape {tuple(pipe.data.shape)}; the "
                          f"student's data {data!r} has shape {tuple(data.shape)}", "teacher")
    if method != "reflow" and repr(pipe.sde) != repr(sde):
        raise ConfigError(f"teacher={str(spec)!r} was trained under {pipe.sde!r}; the student's process is {sde!r}: "
                          "give the teacher's sde= (or distill.method=reflow, which trains a flow from any teacher)",
                          "teacher")
    previous = pipe.config.get("distill") or {}
    substeps = 2 if cfg.distill.substeps is None else cfg.distill.substeps
    if method == "progressive" and previous.get("method") == "progressive":
        if steps * substeps != previous.get("steps"):
            raise ConfigError(f"distill.steps={steps} cannot come from the {previous.get('steps')}-step teacher "
                              f"{str(spec)!r} by progressive distillation with distill.substeps={substeps}: give "
                              f"distill.steps={previous.get('steps') // substeps} (or distill.substeps so that "
                              f"steps x substeps = {previous.get('steps')})", "distill.steps")
    model = pipe.model.requires_grad_(False).eval()
    if cfg.model.get("conditional") and getattr(model, "num_classes", None) is None:
        raise ConfigError(f"teacher={str(spec)!r} is unconditional; a conditional student (model.conditional=true) "
                          "needs a teacher trained on labels (train.cond_drop > 0)", "teacher")
    if method == "reflow":
        return {"teacher": model, "teacher_sde": pipe.sde, "teacher_solver": pipe.solver()}
    return {"teacher": model, **({"substeps": 2} if cfg.distill.substeps is None else {})}


INITS = ("auto", "teacher", "none")


def loss_node(node):
    """The distill node as the loss is built from it: without ``init``, which init_student reads."""
    node = node.copy()
    with open_dict(node):
        node.pop("init", None)
    return node


def init_student(student, teacher, how):
    """The student's weights at the start of distillation, as the papers start it (Salimans & Ho 2022, Song et al.
    2023: a copy of the teacher): 'teacher' copies the teacher's network weights (the same network; under another
    parameterization its output is read differently, a start from the teacher's features), 'none' keeps the fresh
    ones, 'auto' copies where the teacher is a run of the same network and parameterization (a round of progressive
    distillation from the previous round's student). Returns whether it copied."""
    how = check_choice("distill.init", how, INITS)
    if how == "none":
        return False
    fits = (isinstance(teacher, ScoreModel) and isinstance(student, ScoreModel)
            and signature(student) == signature(teacher))
    if how == "auto":
        if not (fits and teacher.parameterization == student.parameterization):
            return False
    elif not fits:
        raise ConfigError("distill.init=teacher copies the teacher's weights into the student: the teacher "
                          f"{type(teacher).__name__} is not a network of the student's shape (give the teacher's "
                          "model.net settings, or distill.init=none)", "distill.init")
    student.load_state_dict(teacher.state_dict())
    return True
