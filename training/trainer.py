"""The training step and loop: Adam with warm-up and clipping, EMA, mixed precision on GPU, CSV log, atomic
checkpoints."""
import contextlib
import copy
import csv
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sde.errors import CheckpointError, ConfigError, check_int, check_number

from .checkpoint import load_checkpoint, save_checkpoint, signature
from .state import TrainState


def hide_progress(progress):
    """tqdm's ``disable`` for progress = True, False or 'auto' (shown when stderr is a terminal)."""
    return None if progress == "auto" else not progress


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class WithLabels:
    """model(x, t, labels) as a score function (x, t): what a loss sees of a conditional model on a batch."""

    def __init__(self, model, labels):
        self.model, self.labels = model, labels

    def __call__(self, x, t):
        return self.model(x, t, self.labels)


def draw_batch(data, n, generator, num_classes=None, cond_drop=0.0):
    """n training points, dequantized within their bins for 8-bit data, and for a conditional model
    (num_classes) their labels, each replaced by the null label num_classes with probability cond_drop."""
    if num_classes is None:
        return data.dequantize(data.sample(n, generator), generator), None
    x0, labels = data.sample(n, generator, labels=True)
    drop = torch.rand(n, generator=generator) < cond_drop
    return data.dequantize(x0, generator), torch.where(drop, num_classes, labels)


def train_step(state, loss, sde, x0, lr, grad_clip=0.0, autocast=False, labels=None):
    """One optimizer step on the batch x0 (with its labels, for a conditional model) at learning rate lr;
    returns the loss before the step (a tensor), or raises TrainingError, leaving the state untouched, when it
    is not finite."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    model = state.model if labels is None else WithLabels(state.model, labels.to(x0.device))
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=autocast):
        value = loss(model, sde, x0, state.noise_generator)
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
    """Minimises ``loss(model, sde, x0, generator)`` over batches drawn by ``data.sample`` (8-bit data
    dequantized within their bins, as the likelihood sees them).

    The learning rate rises linearly over ``warmup`` steps, gradients are clipped to norm ``grad_clip``,
    and an EMA of the weights (decay ``ema_decay``) is what ``fit`` returns. Every ``ckpt_every`` steps and
    at the end, ``checkpoint.pt`` in the output folder is replaced atomically; it holds the TrainState, so a
    resumed run continues exactly where it stopped, and ``meta`` (what the caller says about the model).
    A conditional model (one with ``num_classes``) trains on labelled batches, each label replaced by the null
    class with probability ``cond_drop``, so one network learns both s(x, t, y) and s(x, t, ∅).
    """

    def __init__(self, steps=5000, batch_size=512, lr=2e-3, warmup=100, grad_clip=1.0, ema_decay=0.999,
                 weight_decay=0.0, ckpt_every=1000, amp=True, progress=True, seed=0, cond_drop=0.0):
        self.steps = check_int("steps", steps, 0)
        self.batch_size = check_int("batch_size", batch_size)
        self.ckpt_every = check_int("ckpt_every", ckpt_every)
        self.lr = check_number("lr", lr)
        self.warmup = check_int("warmup", warmup, 0)
        self.grad_clip = check_number("grad_clip", grad_clip, strict=False)
        self.ema_decay = check_number("ema_decay", ema_decay, strict=False, maximum=1.0, strict_max=True)
        self.weight_decay = check_number("weight_decay", weight_decay, strict=False)
        self.amp, self.progress, self.seed = bool(amp), progress, int(seed)
        self.cond_drop = check_number("cond_drop", cond_drop, strict=False, maximum=1.0)

    def learning_rate(self, step):
        """lr · min(1, (step + 1) / warmup)."""
        return self.lr * min(1.0, (step + 1) / max(self.warmup, 1))

    def fit(self, model, loss, sde, data, out_dir, device, resume=None, meta=None):
        """Trains ``model`` in place up to ``steps`` and returns (ema_model, last_step).

        A checkpoint is taken every ``ckpt_every`` steps but written only once it has proven good: its weights
        (model and EMA) are finite and the loss of the step after it is finite (at the last step, the loss of
        one more batch). So the file a non-finite stop names always resumes.
        """
        out_dir = Path(out_dir)
        ckpt_path = out_dir / "checkpoint.pt"
        remove_stale_temporaries(ckpt_path)
        state = TrainState(model, self.lr, self.weight_decay, self.ema_decay, self.seed, device)
        if resume is not None:
            state.load_state_dict(load_checkpoint(resume, model))
        autocast = self.amp and device.type == "cuda"
        pending = None
        num_classes = getattr(model, "num_classes", None)
        if self.cond_drop and num_classes is None:
            raise ConfigError(f"cond_drop={self.cond_drop:g} needs a conditional model (labelled data)", "cond_drop")

        def stop(why):
            kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
            return TrainingError(f"{why}; {kept} (try a lower learning rate or gradient clip)")

        def write(snapshot):
            tensors = {**{f"model.{k}": v for k, v in snapshot["model"].items()},
                       **{f"ema.{k}": v for k, v in snapshot["ema"]["shadow"].items()}}
            bad = nonfinite(tensors)
            if bad:
                raise stop(f"the weights became non-finite by step {snapshot['step']} ({len(bad)} of {len(tensors)} "
                           f"tensors, first {bad[0]})")
            try:
                save_checkpoint(ckpt_path, **snapshot, signature=signature(model), meta=meta or {})
            except OSError as e:
                raise stop(f"checkpoint {ckpt_path} could not be written ({e})") from None

        model.train()
        with open_log(out_dir / "train_log.csv", state.step) as (fh, log), \
                tqdm(total=self.steps, initial=state.step, disable=hide_progress(self.progress), desc="train",
                     dynamic_ncols=True) as bar:
            start, running = time.perf_counter(), None
            while state.step < self.steps:
                lr = self.learning_rate(state.step)
                x0, labels = draw_batch(data, self.batch_size, state.data_generator, num_classes, self.cond_drop)
                try:
                    value = train_step(state, loss, sde, x0.to(device), lr, self.grad_clip, autocast, labels).item()
                except TrainingError as e:
                    raise stop(str(e)) from None
                if pending is not None:
                    write(pending)
                    pending = None
                running = value if running is None else 0.98 * running + 0.02 * value
                log.writerow([state.step, f"{value:.6g}", f"{lr:.6g}", f"{time.perf_counter() - start:.3f}"])
                bar.update(1)
                if state.step % 25 == 0 or state.step == self.steps:
                    bar.set_postfix(loss=f"{running:.4f}")
                if state.step % self.ckpt_every == 0 or state.step == self.steps:
                    fh.flush()
                    pending = copy.deepcopy(state.state_dict())
            if pending is not None:
                self.check_final_loss(state, loss, sde, data, device, autocast, stop)
                write(pending)
        model.eval()
        return state.ema_model(), state.step

    def check_final_loss(self, state, loss, sde, data, device, autocast, stop):
        """The loss of the final weights on one more batch (drawn apart from the run's generators) is finite."""
        gen = torch.Generator().manual_seed(self.seed + 2)
        x0, labels = draw_batch(data, self.batch_size, gen, getattr(state.model, "num_classes", None), self.cond_drop)
        x0 = x0.to(device)
        model = state.model if labels is None else WithLabels(state.model, labels.to(device))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            value = loss(model, sde, x0, torch.Generator(device).manual_seed(self.seed + 3))
        if not torch.isfinite(value):
            raise stop(f"the loss of the final weights is {value.item()}")


def nonfinite(tensors):
    """The names of the floating-point tensors in a {name: tensor} dict that hold NaN or inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def remove_stale_temporaries(path):
    """Temporary checkpoint files left by a killed write (the run directory is this run's alone)."""
    for tmp in path.parent.glob(path.name + ".tmp*"):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_log(path, step):
    """The CSV log opened for appending, its rows after ``step`` (a resumed checkpoint's) dropped first."""
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [row for row in csv.reader(fh) if row]
        rows = rows[:1] + [row for row in rows[1:] if row[0].isdigit() and int(row[0]) <= step]
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    with open(path, "a", newline="") as fh:
        log = csv.writer(fh)
        if not rows:
            log.writerow(["step", "loss", "lr", "seconds"])
        yield fh, log


def sampling_weights(state, ema=True):
    """A read checkpoint's EMA weights (``ema=False``: the raw ones) and step, or a CheckpointError when they are
    missing or not finite."""
    which = "EMA" if ema else "model"
    try:
        weights, step = state["ema"]["shadow"] if ema else state["model"], int(state["step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"ckpt={state['path']!r} lacks its {which} weights or step: it cannot be sampled",
                              "ckpt") from None
    bad = nonfinite(weights)
    if bad:
        raise CheckpointError(f"ckpt={state['path']!r} holds non-finite {which} weights ({len(bad)} tensors, first "
                              f"{bad[0]}): it cannot be sampled", "ckpt")
    return weights, step


def load_for_sampling(model, path):
    """Loads a checkpoint's EMA weights into ``model`` (checked against its structure and for finite values)
    and returns its step."""
    weights, step = sampling_weights(load_checkpoint(path, model))
    model.load_state_dict(weights)
    return step
