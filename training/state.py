"""Everything a training run carries from step to step, and how it is saved and restored."""
import copy

import torch

from sde.errors import CheckpointError

from .ema import EMA

PARTS = ("model", "ema", "optimizer", "step", "data_generator", "noise_generator", "torch_rng")


class TrainState:
    """The model, its EMA, the optimizer, the step count and the two generators (data draws on the CPU, noise
    and times on the model's device). ``state_dict`` and ``load_state_dict`` carry all of it, and the global
    CPU random state, so a restored run continues bit for bit."""

    def __init__(self, model, lr, weight_decay, ema_decay, seed, device):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.ema = EMA(model, ema_decay)
        self.data_generator = torch.Generator().manual_seed(seed)
        self.noise_generator = torch.Generator(device).manual_seed(seed + 1)
        self.step = 0

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "data_generator": self.data_generator.get_state(),
                "noise_generator": self.noise_generator.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state):
        missing = [k for k in PARTS if k not in state]
        if missing:
            raise CheckpointError(f"ckpt={state.get('path', '?')!r} lacks {', '.join(missing)}: it cannot resume "
                                  "training, only be sampled", "ckpt")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_generator"])
        if state["noise_generator"].numel() == self.noise_generator.get_state().numel():
            self.noise_generator.set_state(state["noise_generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])

    def ema_model(self):
        """A copy of the model holding the averaged weights, in eval mode."""
        averaged = copy.deepcopy(self.model)
        self.ema.copy_to(averaged)
        return averaged.eval()
