"""The training step and loop: Adam with warm-up and clipping, EMA, mixed precision on GPU, CSV log, atomic
checkpoints."""
import csv
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sde.errors import check_int, check_number

from .checkpoint import load_checkpoint, save_checkpoint, signature
from .state import TrainState


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


def train_step(state, loss, sde, x0, lr, grad_clip=0.0, autocast=False):
    """One optimizer step on the batch x0 at learning rate lr; returns the loss before the step (a tensor), or
    raises TrainingError, leaving the state untouched, when it is not finite."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=autocast):
        value = loss(state.model, sde, x0, state.noise_generator)
    if not torch.isfinite(value):
        raise TrainingError(f"the loss became {value.item()} at step {state.step + 1}")
    state.optimizer.zero_grad(set_to_none=True)
    value.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.optimizer.step()
    state.ema.update(state.model)
    state.step += 1
    return value.detach()


class Trainer:
    """Minimises ``loss(model, sde, x0, generator)`` over batches drawn by ``data.sample``.

    The learning rate rises linearly over ``warmup`` steps, gradients are clipped to norm ``grad_clip``,
    and an EMA of the weights (decay ``ema_decay``) is what ``fit`` returns. Every ``ckpt_every`` steps and
    at the end, ``checkpoint.pt`` in the output folder is replaced atomically; it holds the TrainState, so a
    resumed run continues exactly where it stopped, and ``meta`` (what the caller says about the model).
    """

    def __init__(self, steps=5000, batch_size=512, lr=2e-3, warmup=100, grad_clip=1.0, ema_decay=0.999,
                 weight_decay=0.0, ckpt_every=1000, amp=True, progress=True, seed=0):
        self.steps = check_int("steps", steps, 0)
        self.batch_size = check_int("batch_size", batch_size)
        self.ckpt_every = check_int("ckpt_every", ckpt_every)
        self.lr = check_number("lr", lr)
        self.warmup = check_int("warmup", warmup, 0)
        self.grad_clip = check_number("grad_clip", grad_clip, strict=False)
        self.ema_decay = check_number("ema_decay", ema_decay, strict=False, maximum=1.0, strict_max=True)
        self.weight_decay = check_number("weight_decay", weight_decay, strict=False)
        self.amp, self.progress, self.seed = bool(amp), bool(progress), int(seed)

    def learning_rate(self, step):
        """lr · min(1, (step + 1) / warmup)."""
        return self.lr * min(1.0, (step + 1) / max(self.warmup, 1))

    def fit(self, model, loss, sde, data, out_dir, device, resume=None, meta=None):
        """Trains ``model`` in place up to ``steps`` and returns (ema_model, last_step)."""
        out_dir = Path(out_dir)
        ckpt_path = out_dir / "checkpoint.pt"
        state = TrainState(model, self.lr, self.weight_decay, self.ema_decay, self.seed, device)
        if resume is not None:
            state.load_state_dict(load_checkpoint(resume, model))

        def checkpoint():
            save_checkpoint(ckpt_path, **state.state_dict(), signature=signature(model), meta=meta or {})

        autocast = self.amp and device.type == "cuda"
        model.train()
        with open(out_dir / "train_log.csv", "a", newline="") as fh, \
                tqdm(total=self.steps, initial=state.step, disable=not self.progress, desc="train",
                     dynamic_ncols=True) as bar:
            log = csv.writer(fh)
            if fh.tell() == 0:
                log.writerow(["step", "loss", "lr", "seconds"])
            start, running = time.perf_counter(), None
            while state.step < self.steps:
                lr = self.learning_rate(state.step)
                x0 = data.sample(self.batch_size, state.data_generator).to(device)
                try:
                    value = train_step(state, loss, sde, x0, lr, self.grad_clip, autocast).item()
                except TrainingError as e:
                    kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else \
                        "no checkpoint was written yet"
                    raise TrainingError(f"{e}; {kept} (try a lower learning rate or gradient clip)") from None
                running = value if running is None else 0.98 * running + 0.02 * value
                log.writerow([state.step, f"{value:.6g}", f"{lr:.6g}", f"{time.perf_counter() - start:.3f}"])
                bar.update(1)
                if state.step % 25 == 0 or state.step == self.steps:
                    bar.set_postfix(loss=f"{running:.4f}")
                if state.step % self.ckpt_every == 0 or state.step == self.steps:
                    fh.flush()
                    checkpoint()
        model.eval()
        return state.ema_model(), state.step


def load_for_sampling(model, path):
    """Loads a checkpoint's EMA weights into ``model`` (checked against its structure) and returns its step."""
    state = load_checkpoint(path, model)
    model.load_state_dict(state["ema"]["shadow"])
    return int(state["step"])
