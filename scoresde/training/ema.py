"""Exponential moving average of a model's weights."""
import contextlib

import torch

from sde.errors import CheckpointError, check_number


class EMA:
    """A shadow copy θ̄ of a model's parameters and buffers, updated as θ̄ ← d θ̄ + (1 − d) θ.

    d = decay, or with ``warmup`` d_n = min(decay, (1 + n) / (10 + n)) at the n-th update (n = 0, 1, ...),
    so that early averages are not dominated by the random initialisation. Floating-point entries are
    averaged; integer buffers (counters) are copied.
    """

    def __init__(self, model, decay=0.999, warmup=True):
        self.decay = check_number("decay", decay, strict=False, maximum=1.0)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self):
        """The decay the next update will use."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model):
        """θ̄ ← d θ̄ + (1 − d) θ for every floating-point entry of model.state_dict()."""
        d = self.current_decay()
        shadows, values = [], []
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadows.append(shadow)
                values.append(value.detach().to(shadow))
            else:
                shadow.copy_(value)
        if shadows:
            torch._foreach_lerp_(shadows, values, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model):
        """Load the averaged weights into model."""
        model.load_state_dict(self.shadow)

    @contextlib.contextmanager
    def swapped(self, model):
        """Within the block the model holds the averaged weights; its own are restored on exit."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(backup)

    def to(self, device=None, dtype=None):
        """Move the shadow (floating-point entries take dtype as well)."""
        self.shadow = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                       for k, v in self.shadow.items()}
        return self

    def state_dict(self):
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state):
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise CheckpointError(f"the EMA state does not match the model: keys {sorted(missing)[:5]} differ")
        self.decay, self.warmup, self.num_updates = float(state["decay"]), bool(state["warmup"]), int(state["num_updates"])
        self.shadow = {k: state["shadow"][k].detach().clone().to(self.shadow[k].device) for k in self.shadow}

    def __repr__(self):
        return f"EMA(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates})"
