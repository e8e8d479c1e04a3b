"""The training loop: Adam with warm-up and clipping, EMA, mixed precision on GPU, CSV log, atomic checkpoints."""
import copy
import csv
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models.ema import EMA

from .checkpoint import load_checkpoint, save_checkpoint, signature


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class Trainer:
    """Minimises ``loss(model, sde, x0, generator)`` over batches drawn by ``data.sample``.

    The learning rate rises linearly over ``warmup`` steps, gradients are clipped to norm ``grad_clip``,
    and an EMA of the weights (decay ``ema_decay``) is what ``fit`` returns. Every ``ckpt_every`` steps and
    at the end, ``checkpoint.pt`` in the output folder is replaced atomically; it holds model, EMA,
    optimizer, step and random-number states, so a resumed run continues exactly where it stopped.
    """

    def __init__(self, steps=5000, batch_size=512, lr=2e-3, warmup=100, grad_clip=1.0, ema_decay=0.999,
                 weight_decay=0.0, ckpt_every=1000, amp=True, progress=True, seed=0):
        for name, value in (("steps", steps), ("batch_size", batch_size), ("ckpt_every", ckpt_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "steps" else 1):
                raise ValueError(f"train.{name}={value!r} is invalid: expected an integer >= {0 if name == 'steps' else 1}")
        if not float(lr) > 0:
            raise ValueError(f"train.lr={lr!r} is invalid: expected a number > 0")
        if not 0 <= float(ema_decay) < 1:
            raise ValueError(f"train.ema_decay={ema_decay!r} is invalid: expected 0 <= decay < 1")
        self.steps, self.batch_size, self.lr, self.warmup = steps, batch_size, float(lr), int(warmup)
        self.grad_clip, self.ema_decay, self.weight_decay = float(grad_clip), float(ema_decay), float(weight_decay)
        self.ckpt_every, self.amp, self.progress, self.seed = ckpt_every, bool(amp), bool(progress), int(seed)

    def fit(self, model, loss, sde, data, out_dir, device, resume=None):
        """Trains ``model`` in place up to ``steps`` and returns (ema_model, last_step)."""
        out_dir = Path(out_dir)
        ckpt_path = out_dir / "checkpoint.pt"
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        ema = EMA(model, self.ema_decay)
        data_gen = torch.Generator().manual_seed(self.seed)
        noise_gen = torch.Generator(device).manual_seed(self.seed + 1)
        step = 0
        if resume is not None:
            state = load_checkpoint(resume, model)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            data_gen.set_state(state["data_generator"])
            if state["noise_generator"].numel() == noise_gen.get_state().numel():
                noise_gen.set_state(state["noise_generator"])
            torch.set_rng_state(state["torch_rng"])
            step = int(state["step"])

        def checkpoint():
            save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                            step=step, data_generator=data_gen.get_state(), noise_generator=noise_gen.get_state(),
                            torch_rng=torch.get_rng_state(), signature=signature(model))

        autocast = self.amp and device.type == "cuda"
        log_exists = (out_dir / "train_log.csv").exists()
        model.train()
        with open(out_dir / "train_log.csv", "a", newline="") as fh:
            log = csv.writer(fh)
            if not log_exists:
                log.writerow(["step", "loss", "lr", "seconds"])
            bar = tqdm(total=self.steps, initial=step, disable=not self.progress, desc="train", dynamic_ncols=True)
            start, running = time.perf_counter(), None
            while step < self.steps:
                lr = self.lr * min(1.0, (step + 1) / max(self.warmup, 1))
                for group in opt.param_groups:
                    group["lr"] = lr
                x0 = data.sample(self.batch_size, data_gen).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    value = loss(model, sde, x0, noise_gen)
                if not torch.isfinite(value):
                    kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
                    raise TrainingError(f"the loss became {value.item()} at step {step + 1}; {kept} "
                                        f"(try a lower train.lr or train.grad_clip)")
                opt.zero_grad(set_to_none=True)
                value.backward()
                if self.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                opt.step()
                ema.update(model)
                step += 1
                v = value.item()
                running = v if running is None else 0.98 * running + 0.02 * v
                log.writerow([step, f"{v:.6g}", f"{lr:.6g}", f"{time.perf_counter() - start:.3f}"])
                bar.update(1)
                if step % 25 == 0 or step == self.steps:
                    bar.set_postfix(loss=f"{running:.4f}")
                if step % self.ckpt_every == 0 or step == self.steps:
                    fh.flush()
                    checkpoint()
            bar.close()
        model.eval()
        ema_model = copy.deepcopy(model)
        ema.copy_to(ema_model)
        return ema_model.eval(), step


def load_for_sampling(model, path):
    """Loads a checkpoint's EMA weights into ``model`` (checked against its structure) and returns its step."""
    state = load_checkpoint(path, model)
    model.load_state_dict(state["ema"]["shadow"])
    return int(state["step"])
