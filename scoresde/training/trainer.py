"""The training step and loop: Adam or AdamW with warm-up, a constant or cosine learning rate, clipping, gradient
accumulation, EMA, mixed precision, channels-last and torch.compile on GPU, a CSV log (and TensorBoard), sample
grids, atomic checkpoints; the loss is read back to the host only every ``log_every`` steps."""
import contextlib
import copy
import csv
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from scoresde.data.base import share
from sde.errors import CheckpointError, TrainingError, ConfigError, check_choice, check_int, check_number, invalid

from . import distributed
from .checkpoint import checkpoint_file, load_checkpoint, save_checkpoint, signature
from .distributed import is_main_process
from .state import OPTIMIZERS, TrainState, checkpoint_step

SCHEDULES = ("constant", "cosine")


def hide_progress(progress):
    """tqdm's ``disable`` for progress = True, False or 'auto' (shown when stderr is a terminal)."""
    return None if progress == "auto" else not progress


class WithLabels:
    """model(x, t, labels) as a score function (x, t): what a loss sees of a conditional model on a batch."""

    def __init__(self, model, labels):
        self.model, self.labels = model, labels

    def __call__(self, x, t):
        return self.model(x, t, self.labels)


def prepare_batch(data, x0, labels, generator, num_classes=None, cond_drop=0.0, part=None):
    """A drawn batch made ready for the loss, with ``generator`` (on the batch's device): 8-bit data dequantized
    within their bins; for a conditional model (num_classes) each label replaced by the null label num_classes
    with probability cond_drop. With ``part`` = (index, count), x0 is that part of a global batch (share): the
    draws are made for the whole batch (x0 tiled count times in its place) and the part's rows kept, so with a
    shared generator the parts of all processes are prepared exactly as the whole batch is in one."""
    if part is not None and part[1] > 1:
        rows = share(len(x0) * part[1], part)
        tile = [part[1]] + [1] * (x0.ndim - 1)
        x0, labels = prepare_batch(data, x0.repeat(*tile), None if labels is None else labels.repeat(part[1]),
                                   generator, num_classes, cond_drop)
        return x0[rows], None if labels is None else labels[rows]
    x0 = data.dequantize(x0, generator)
    if num_classes is None:
        return x0, None
    drop = torch.rand(len(labels), generator=generator, device=labels.device) < cond_drop
    return x0, torch.where(drop, num_classes, labels)


def draw_batch(data, n, generator, num_classes=None, cond_drop=0.0):
    """n training points drawn by ``data.sample`` and prepared (prepare_batch) with the same CPU generator."""
    if num_classes is None:
        return prepare_batch(data, data.sample(n, generator), None, generator)
    x0, labels = data.sample(n, generator, labels=True)
    return prepare_batch(data, x0, labels, generator, num_classes, cond_drop)


def accumulate_gradients(model, loss, sde, x0, generator, labels=None, accumulate=1, autocast=False):
    """Backpropagates the loss of the batch x0 in ``accumulate`` equal micro-batches B_i, each scaled by
    1/accumulate, so the gradients add up to ∇ (1/k) Σ_i L(B_i) = ∇ L(x0) for a loss that averages over the batch;
    returns that mean loss as a detached tensor, without reading it back to the host. A distributed model
    averages the gradients over the processes once, in the last micro-batch's backward."""
    total = None
    parts = torch.tensor_split(labels, accumulate) if labels is not None else [None] * accumulate
    for i, (xb, yb) in enumerate(zip(torch.tensor_split(x0, accumulate), parts)):
        fn = model if yb is None else WithLabels(model, yb)
        defer = i < accumulate - 1 and hasattr(model, "no_sync")
        with model.no_sync() if defer else contextlib.nullcontext():
            with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=autocast):
                value = loss(fn, sde, xb, generator)
            (value / accumulate).backward()
        value = value.detach().float()
        total = value if total is None else total + value
    return total / accumulate


def train_step(state, loss, sde, x0, lr, grad_clip=0.0, autocast=False, labels=None, accumulate=1):
    """One optimizer step on the batch x0 (with its labels, for a conditional model) at learning rate lr, its
    gradient accumulated over ``accumulate`` micro-batches; returns the batch's loss before the step as a tensor on
    the device. Nothing is read back to the host: the caller checks the loss is finite (a non-finite one leaves
    non-finite weights behind it)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    if hasattr(loss, "before_step"):
        loss.before_step(state.model)
    model = state.train_model
    value = accumulate_gradients(model, loss, sde, x0, state.noise_generator,
                                 None if labels is None else labels.to(x0.device), accumulate, autocast)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.optimizer.step()
    state.ema.update(state.model)
    state.step += 1
    return value


def read_back(values):
    """The losses of the steps since the last read-back, as Python floats (in a distributed run averaged over the
    processes: the global batch's losses): the one place the training loop waits for the device and the
    other processes."""
    return distributed.all_mean(torch.stack(values)).cpu().tolist()


def collective_callback(fn, step, model, device):
    """fn(step, model) on every process (a callback's sampling and evaluation split their work across the
    processes, which must all take part; only the main process writes), without gradients, the random states
    restored afterwards so that it does not change the run."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        fn(step, model)


def _option(name, value, choices=(True, False)):
    """``value`` when it is one of ``choices`` (booleans matched as booleans, not as 0 or 1)."""
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    raise invalid(name, value, " or ".join(str(c).lower() for c in choices))


class Trainer:
    """Minimises ``loss(model, sde, x0, generator)`` over the batches of ``data.batches`` (8-bit data dequantized
    within their bins, as the likelihood sees them).

    - Learning rate: linear warm-up over ``warmup`` steps to ``lr``, then ``schedule`` 'constant' or 'cosine'
      (down to ``lr_min`` at the last step; see learning_rate). ``optimizer`` 'adam' or 'adamw' (with
      ``weight_decay``); gradients clipped to norm ``grad_clip``.
    - ``batch_size`` is the batch of one optimizer step: with ``accumulate`` = k its gradient is summed over k
      micro-batches of batch_size / k (less memory, the same step up to float rounding).
    - Under torchrun (distributed.init_from_env) ``batch_size`` is the global batch: each of the W processes
      trains on its own batch_size / W rows of it (data.batches' part) in DistributedDataParallel, which averages
      the gradients, so W processes take the step one process takes on the whole batch; every process draws
      its own noise (TrainState).
    - An EMA of the weights (decay ``ema_decay``; with ``ema_warmup`` min(decay, (1 + n) / (10 + n)) at update n)
      is what ``fit`` returns.
    - On CUDA: bf16 autocast (``amp``); channels-last weights and batches (``channels_last``: 'auto' = on CUDA
      for images); ``compile`` runs the training forward and backward through torch.compile.
    - The loss of each step stays on the device. The losses are read back to the host (the loop's only wait)
      every ``log_every`` steps, at checkpoint steps and the step after them, at ``sample_every`` steps and at the
      end; a non-finite loss stops training at the read-back after it, naming its step.
    - ``train_log.csv`` gets a row every ``log_every`` steps and at the end: the step, the mean loss over the
      steps since the previous row, the learning rate of that step, the seconds since the start; with
      ``tensorboard`` the same scalars go to ``tensorboard/`` beside it.
    - Every ``ckpt_every`` steps and at the end, ``checkpoint.pt`` in the output folder is replaced atomically;
      it holds the TrainState, so a resumed run continues exactly where it stopped, and ``meta`` (what the
      caller says about the model). A loss that carries state of its own (a consistency loss's target network)
      has ``before_step(model)``, called before every optimizer step, and with it ``state_dict()`` and
      ``load_state_dict(state, model, path)``: that state is kept in the checkpoint as ``loss``.
    - Every ``sample_every`` steps (0: never) ``fit``'s ``on_sample(step, ema_model)`` is called on every
      process (collective_callback), with the random states restored afterwards, so pictures do not change the
      run.
    - A conditional model (one with ``num_classes``) trains on labelled batches, each label replaced by the null
      class with probability ``cond_drop``, so one network learns both s(x, t, y) and s(x, t, ∅).

    Files (log, checkpoints, pictures) are written by the main process alone (is_main_process); EMA and
    checkpoints hold the model's own weights, not a wrapper's, so checkpoints move between one process and many.
    """

    def __init__(self, steps=5000, batch_size=512, lr=2e-3, warmup=100, grad_clip=1.0, ema_decay=0.999,
                 weight_decay=0.0, ckpt_every=1000, amp=True, progress=True, seed=0, cond_drop=0.0, optimizer="adam",
                 schedule="constant", lr_min=0.0, accumulate=1, log_every=25, ema_warmup=True, channels_last="auto",
                 compile=False, sample_every=0, tensorboard=False):
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
        self.optimizer = check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.lr_min = check_number("lr_min", lr_min, strict=False)
        if self.lr_min > self.lr:
            raise ConfigError(f"lr_min={lr_min!r} is invalid: it exceeds lr={lr!r}", ("lr_min", "lr"))
        self.accumulate = check_int("accumulate", accumulate)
        if self.batch_size % self.accumulate:
            raise ConfigError(f"batch_size={batch_size} is not a multiple of accumulate={accumulate}: the micro-batches "
                              "must be equal", ("batch_size", "accumulate"))
        self.log_every = check_int("log_every", log_every)
        self.ema_warmup = _option("ema_warmup", ema_warmup)
        self.channels_last = _option("channels_last", channels_last, ("auto", True, False))
        self.compile = _option("compile", compile)
        self.sample_every = check_int("sample_every", sample_every, 0)
        self.tensorboard = _option("tensorboard", tensorboard)
        if self.tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard",
                                  "tensorboard") from None

    def learning_rate(self, step):
        """The rate of the step after ``step`` steps: lr · min(1, (step + 1) / warmup), and for 'cosine' after the
        warm-up lr_min + (lr − lr_min) · ½ (1 + cos π p), p = (step + 1 − warmup) / (steps − warmup): lr at the end
        of the warm-up, lr_min at the last step."""
        rate = self.lr * min(1.0, (step + 1) / max(self.warmup, 1))
        if self.schedule == "constant" or step + 1 <= self.warmup:
            return rate
        p = min(1.0, (step + 1 - self.warmup) / max(self.steps - self.warmup, 1))
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * p))

    def uses_channels_last(self, device, data):
        """channels_last 'auto': on CUDA, for images."""
        if self.channels_last == "auto":
            return torch.device(device).type == "cuda" and len(data.shape) == 3
        return self.channels_last

    def fit(self, model, loss, sde, data, out_dir, device, resume=None, meta=None, on_sample=None, on_eval=None,
            eval_every=0, callbacks=()):
        """Trains ``model`` in place up to ``steps`` and returns (ema_model, last_step); writes into ``out_dir``
        (created if missing). Every ``eval_every`` steps (0: never) ``on_eval(step, ema_model)`` is called as
        on_sample is. Each of ``callbacks`` (after on_sample and on_eval, in order) is called as
        ``callback(step, ema_model)`` every ``callback.every`` steps (0: never), as on_sample is; one whose
        ``needs_model`` is False is called as ``callback(step)`` after every step, on this process alone.

        A checkpoint is taken every ``ckpt_every`` steps but written only once it has proven good: its weights
        (model and EMA) are finite and the loss of the step after it is finite (at the last step, the loss of
        one more batch). So the file a non-finite stop names always resumes.
        """
        out_dir, device = Path(out_dir), torch.device(device)
        ckpt_path = out_dir / "checkpoint.pt"
        main, rank, world = is_main_process(), distributed.rank(), distributed.world_size()
        distributed.keep_checkpoint_in(ckpt_path if world > 1 else None)
        local_batch = self.local_batch(world)
        part = (rank, world) if world > 1 else None
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(ckpt_path)
            if resume is not None:
                remove_stale_temporaries(checkpoint_file(resume), only_dead=True)
        num_classes = getattr(model, "num_classes", None)
        if self.cond_drop and num_classes is None:
            raise ConfigError(f"cond_drop={self.cond_drop:g} needs a conditional model (labelled data)", "cond_drop")
        channels_last = self.uses_channels_last(device, data)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        wrapped = distributed.wrap(model, device)
        state = TrainState(model, self.lr, self.weight_decay, self.ema_decay, self.seed, device, self.optimizer,
                           self.ema_warmup, rank)
        state.train_model = wrapped
        if resume is not None:
            saved = load_checkpoint(resume, model)
            state.load_state_dict(saved)
            if hasattr(loss, "before_step"):
                loss.load_state_dict(saved.get("loss"), model, resume)
            if state.step > self.steps:
                raise ConfigError(f"steps={self.steps} is below the step {state.step} that the checkpoint {resume} has "
                                  "reached: nothing would be trained", "steps")
        if self.compile:
            state.train_model = torch.compile(wrapped)
        autocast = self.amp and device.type == "cuda"
        calls = [(self.sample_every, on_sample), (check_int("eval_every", eval_every, 0), on_eval)]
        calls = [(every, call) for every, call in calls if call is not None]
        light = [callback for callback in callbacks if not getattr(callback, "needs_model", True)]
        calls += [(check_int("every", callback.every, 0), callback) for callback in callbacks if callback not in light]
        calls = [(every, call) for every, call in calls if every]

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
            if not main:
                return
            try:
                save_checkpoint(ckpt_path, **snapshot, signature=signature(model), meta=meta or {})
            except OSError as e:
                why = f"checkpoint {ckpt_path} at step {snapshot['step']} could not be written ({e.strerror or e})"
                kept = "the previous one is kept whole and resumes" if ckpt_path.exists() else "none was written yet"
                raise TrainingError(f"{why}; {kept}") from None

        batches = data.batches(self.batch_size, state.data_generator, labels=num_classes is not None, device=device,
                               seed=self.seed, start=state.step, **({"part": part} if part else {}))
        model.train()
        with contextlib.closing(batches), RunLog(out_dir, state.step, self.tensorboard, main) as log, \
                tqdm(total=self.steps, initial=state.step, disable=hide_progress(self.progress) if main else True,
                     desc="train", dynamic_ncols=True) as bar:
            start, pending, window, row = time.perf_counter(), None, [], []
            while state.step < self.steps:
                lr = self.learning_rate(state.step)
                x0, labels = next(batches)
                x0, labels = prepare_batch(data, x0, labels, state.generator_on(x0.device), num_classes,
                                           self.cond_drop, part)
                x0 = x0.to(device, non_blocking=True)
                if channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                window.append(train_step(state, loss, sde, x0, lr, self.grad_clip, autocast, labels, self.accumulate))
                bar.update(1)
                step, last = state.step, state.step == self.steps
                for call in light:
                    call(step)
                due_row = step % self.log_every == 0 or last
                due_ckpt = step % self.ckpt_every == 0 or last
                due = [call for every, call in calls if step % every == 0]
                if not (due_row or due_ckpt or due or pending is not None):
                    continue
                values = read_back(window)
                bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
                if bad:
                    raise stop(f"the loss became {values[bad[0]]} at step {step - len(values) + 1 + bad[0]}")
                window, row = [], row + values
                if pending is not None:
                    write(pending)
                    pending = None
                if due_row:
                    mean = sum(row) / len(row)
                    log.row(step, mean, lr, time.perf_counter() - start)
                    bar.set_postfix(loss=f"{mean:.4f}")
                    row = []
                if due_ckpt:
                    log.flush()
                    ranks = distributed.gather_objects(state.rank_states())
                    pending = copy.deepcopy(state.state_dict(ranks))
                    if hasattr(loss, "before_step"):
                        pending["loss"] = loss.state_dict()
                for call in due:
                    collective_callback(call, step, state.ema_model(), device)
            if pending is not None:
                self.check_final_loss(state, loss, sde, data, device, autocast, stop, local_batch)
                write(pending)
        state.train_model = model
        model.eval()
        return state.ema_model(), state.step

    def local_batch(self, world):
        """The rows of the global batch that each of ``world`` processes trains on."""
        if self.batch_size % world or (self.batch_size // world) % self.accumulate:
            raise ConfigError(f"batch_size={self.batch_size} (the global batch) does not split into {world} processes "
                              f"x accumulate={self.accumulate} equal micro-batches: use a multiple of "
                              f"{world * self.accumulate}", "batch_size")
        return self.batch_size // world

    def check_final_loss(self, state, loss, sde, data, device, autocast, stop, batch_size=None):
        """The loss of the final weights on one more batch of ``batch_size`` (default: the batch; drawn apart
        from the run's generators, the same on every process) is finite."""
        gen = torch.Generator().manual_seed(self.seed + 2)
        x0, labels = draw_batch(data, batch_size or self.batch_size, gen, getattr(state.model, "num_classes", None),
                                self.cond_drop)
        x0 = x0.to(device)
        model = state.model if labels is None else WithLabels(state.model, labels.to(device))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            value = loss(model, sde, x0, torch.Generator(device).manual_seed(self.seed + 3))
        if not torch.isfinite(value):
            raise stop(f"the loss of the final weights is {value.item()}")


class RunLog:
    """The training log of the main process: ``train_log.csv`` (rows after ``step``, a resumed checkpoint's,
    dropped first) and, with ``tensorboard``, the same scalars in ``tensorboard/``; nothing when not ``enabled``."""

    def __init__(self, out_dir, step, tensorboard=False, enabled=True):
        self.out_dir, self.step, self.tensorboard, self.enabled = Path(out_dir), step, tensorboard, enabled
        self.stack = contextlib.ExitStack()
        self.fh = self.csv = self.writer = None

    def __enter__(self):
        if self.enabled:
            self.fh, self.csv = self.stack.enter_context(open_log(self.out_dir / "train_log.csv", self.step))
            if self.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = self.stack.enter_context(SummaryWriter(str(self.out_dir / "tensorboard")))
        return self

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)

    def row(self, step, loss, lr, seconds):
        if not self.enabled:
            return
        self.csv.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{seconds:.3f}"])
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step)
            self.writer.add_scalar("lr", lr, step)

    def flush(self):
        if self.enabled:
            self.fh.flush()
            if self.writer is not None:
                self.writer.flush()


def nonfinite(tensors):
    """The names of the floating-point tensors in a {name: tensor} dict that hold NaN or inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def remove_stale_temporaries(path, only_dead=False):
    """The temporary files NAME.tmp.PID that writes of ``path`` killed midway left beside it: all of them (the run
    directory is this run's alone), or with ``only_dead`` those whose process PID is gone (the folder of a
    checkpoint resumed from elsewhere, where a live run may be writing)."""
    for tmp in Path(path).parent.glob(Path(path).name + ".tmp*"):
        if not only_dead or not process_alive(tmp.name.rpartition(".")[2]):
            tmp.unlink(missing_ok=True)


def process_alive(pid):
    """Whether the process ``pid`` (a string; anything but a number counts as gone) is running."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def open_log(path, step):
    """The CSV log opened for appending, its rows after ``step`` (a resumed checkpoint's) dropped first, and with
    them any row that is not whole (a write torn by a kill) or does not follow the rows before it."""
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [row for row in csv.reader(fh) if row]
        kept, last = rows[:1], 0
        for row in rows[1:]:
            if len(row) == len(rows[0]) and row[0].isdigit() and last < int(row[0]) <= step:
                kept.append(row)
                last = int(row[0])
        rows = kept
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
        weights = state["ema"]["shadow"] if ema else state["model"]
    except (KeyError, TypeError):
        raise CheckpointError(f"ckpt={state['path']!r} lacks its {which} weights: it cannot be sampled",
                              "ckpt") from None
    step = checkpoint_step(state)
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
