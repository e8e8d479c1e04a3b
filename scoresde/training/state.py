"""Everything a training run carries from step to step, and how it is saved and restored."""
import copy
import numbers

import torch

from sde.errors import CheckpointError, check_choice

from .distributed import rank_seed
from .ema import EMA

PARTS = ("model", "ema", "optimizer", "step", "data_generator", "noise_generator", "torch_rng")
MAX_STEP = 10**9
"""The largest step count a checkpoint may hold: beyond it the file is not a training run's."""
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class TrainState:
    """The model, its EMA, the optimizer, the step count and the two generators (data draws on the CPU, noise
    and times on the model's device). ``state_dict`` and ``load_state_dict`` carry all of it, the global CPU
    random state and, on CUDA, the device's random state, so a restored run continues bit for bit.

    ``optimizer``: 'adam' (L2 weight decay added to the gradient) or 'adamw' (decoupled weight decay);
    ``ema_warmup``: the EMA's decay warm-up (EMA). ``train_model`` is the module the loss calls: the model itself,
    or a wrapper of it (compiled, distributed) that shares its parameters; the state saves the model. The
    optimizer runs fused (one kernel for all parameters; on the CPU a quarter of the unfused step's time for the
    default MLP) where this torch has a fused kernel for the device and dtype, unfused elsewhere.

    In a distributed run every process holds a TrainState: the data generator is shared (every rank draws the
    global batch from the same stream), while process ``rank`` draws its noise, times and the global random
    state (dropout) from streams seeded with (seed, rank) (distributed.rank_seed; rank 0 = one process).
    ``state_dict(ranks=...)`` keeps every rank's own random states, so a run resumed on as many processes
    continues exactly; on another number of processes rank 0 takes the saved states and the others fresh ones.
    """

    def __init__(self, model, lr, weight_decay, ema_decay, seed, device, optimizer="adam", ema_warmup=True, rank=0):
        self.model = self.train_model = model
        self.optimizer_name = check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
        try:
            self.optimizer = OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # no fused kernel for this device or dtype in this torch
            self.optimizer = OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)
        self.ema = EMA(model, ema_decay, warmup=ema_warmup)
        self.device = torch.device(device)
        self.data_generator = torch.Generator().manual_seed(seed)
        self.seed, self.rank = int(seed), int(rank)
        self.noise_generator = torch.Generator(self.device)
        self.seed_rank_streams()
        self.step = 0

    def seed_rank_streams(self):
        """This rank's noise generator from (seed + 1, rank) and, for a rank other than 0, the global random
        state from (seed, rank)."""
        self.noise_generator.manual_seed(rank_seed(self.seed + 1, self.rank))
        if self.rank:
            torch.manual_seed(rank_seed(self.seed, self.rank))

    def rank_states(self):
        """The random states that are this rank's own: its noise generator and the global CPU (and CUDA) state."""
        own = {"noise_generator": self.noise_generator.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return own

    def generator_on(self, device):
        """The run's generator for draws on ``device``: the data generator on the CPU, the noise generator on an
        accelerator."""
        return self.data_generator if torch.device(device).type == "cpu" else self.noise_generator

    def state_dict(self, ranks=None):
        """Everything, with this rank's random states at the top level; ``ranks``: every rank's rank_states, in
        rank order, kept too."""
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "optimizer_name": self.optimizer_name, "step": self.step,
                 "data_generator": self.data_generator.get_state(), **self.rank_states()}
        if ranks is not None and len(ranks) > 1:
            state["ranks"] = list(ranks)
        return state

    def load_state_dict(self, state):
        """Restores a checkpoint's state; the EMA keeps the decay and warm-up this run was configured with."""
        missing = [k for k in PARTS if k not in state]
        if missing:
            raise CheckpointError(f"ckpt={state.get('path', '?')!r} lacks {', '.join(missing)}: it cannot resume "
                                  "training, only be sampled", "ckpt")
        theirs = state.get("optimizer_name", "adam")
        if theirs != self.optimizer_name:
            raise CheckpointError(f"ckpt={state.get('path', '?')!r} was trained with optimizer={theirs!r}; this run "
                                  f"has optimizer={self.optimizer_name!r}: its moments cannot carry over", "ckpt")
        self.check_fits(state)
        self.model.load_state_dict(state["model"])
        decay, warmup = self.ema.decay, self.ema.warmup
        self.ema.load_state_dict(state["ema"])
        self.ema.decay, self.ema.warmup = decay, warmup
        options = [{k: g.get(k) for k in ("fused", "foreach")} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, kept in zip(self.optimizer.param_groups, options):
            group.update(kept)
        self.data_generator.set_state(state["data_generator"])
        self.step = int(state["step"])
        ranks = state.get("ranks") or [state]
        if self.rank >= len(ranks):
            self.seed_rank_streams()
            return
        own = ranks[self.rank]
        if own["noise_generator"].numel() == self.noise_generator.get_state().numel():
            self.noise_generator.set_state(own["noise_generator"])
        torch.set_rng_state(own["torch_rng"])
        if "cuda_rng" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda_rng"], self.device)

    def check_fits(self, state):
        """Raises a CheckpointError naming the part of a checkpoint's training state (whose weights fit the model:
        checkpoint.check_fits) that this state cannot take: its step (checkpoint_step), the EMA's update count,
        the optimizer's groups, parameters and moment shapes, or a random state of another kind or size."""
        path = state.get("path", "?")

        def refuse(what):
            raise CheckpointError(f"ckpt={path!r} holds {what}: it cannot resume training", "ckpt")

        checkpoint_step(state)
        ema = state["ema"]
        if not isinstance(ema, dict) or not isinstance(ema.get("shadow"), dict):
            refuse("no EMA weights")
        count = ema.get("num_updates")
        if not _count(count):
            refuse(f"an EMA update count of {count!r}, not a count")
        for key in ("decay", "warmup"):
            if not isinstance(ema.get(key), (numbers.Real, bool)):
                refuse(f"an EMA {key} of {ema.get(key)!r}, not a number")
        self._check_optimizer(state["optimizer"], refuse)
        _check_random_state("data_generator", state["data_generator"], self.data_generator.get_state(), refuse)
        ranks = state.get("ranks") or [state]
        if not isinstance(ranks, list) or not all(isinstance(r, dict) for r in ranks):
            refuse("per-process random states that are not a list of dicts")
        for i, own in enumerate(ranks):
            where = f" (process {i})" if len(ranks) > 1 else ""
            if not isinstance(own.get("noise_generator"), torch.Tensor) or own["noise_generator"].dtype != torch.uint8:
                refuse(f"a noise_generator state{where} that is not a random state")
            _check_random_state(f"torch_rng{where}", own.get("torch_rng"), torch.get_rng_state(), refuse)
            if "cuda_rng" in own and self.device.type == "cuda":
                _check_random_state(f"cuda_rng{where}", own["cuda_rng"], torch.cuda.get_rng_state(self.device), refuse)

    def _check_optimizer(self, saved, refuse):
        """The optimizer state ``saved`` has this optimizer's groups, each with as many parameters, and every
        moment tensor has its parameter's shape."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        mine = self.optimizer.param_groups
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(groups, list)
                and len(groups) == len(mine) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                     and len(g["params"]) == len(m["params"])
                                                     for g, m in zip(groups, mine))):
            refuse(f"optimizer state that does not fit this model's {sum(len(m['params']) for m in mine)} "
                   f"parameters in {len(mine)} group(s)")
        params = {i: p for g, m in zip(groups, mine) for i, p in zip(g["params"], m["params"])}
        for i, moments in saved["state"].items():
            if i not in params or not isinstance(moments, dict):
                refuse(f"optimizer state for a parameter {i!r} the model does not have")
            p = params[i]
            for key, value in moments.items():
                if key == "step":
                    if not (isinstance(value, torch.Tensor) and value.numel() == 1) and not _count(value):
                        refuse(f"an optimizer step count of {value!r} for {names.get(id(p), i)}")
                elif not isinstance(value, torch.Tensor) or value.shape != p.shape:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    refuse(f"optimizer {key} of shape {shape} for {names.get(id(p), i)}, whose shape is "
                           f"{tuple(p.shape)}")

    def ema_model(self):
        """A copy of the model holding the averaged weights, in eval mode."""
        averaged = copy.deepcopy(self.model)
        self.ema.copy_to(averaged)
        return averaged.eval()


def _count(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _check_random_state(name, value, like, refuse):
    """``value`` is a random state of the kind and size of ``like`` (a generator's get_state())."""
    if not isinstance(value, torch.Tensor) or value.dtype != like.dtype or value.numel() != like.numel():
        got = f"{value.numel()} {value.dtype} entries" if isinstance(value, torch.Tensor) else type(value).__name__
        refuse(f"a {name} state of {got}, not a random state ({like.numel()} entries)")


def checkpoint_step(state):
    """A checkpoint's step: a whole number from 0 to MAX_STEP, or a CheckpointError naming what it holds."""
    step = state.get("step")
    if not _count(step) or step > MAX_STEP:
        raise CheckpointError(f"ckpt={state.get('path', '?')!r} holds step={step!r}, not a step count (a whole number "
                              f"from 0 to {MAX_STEP:,}): it is not a checkpoint of a training run", "ckpt")
    return int(step)
