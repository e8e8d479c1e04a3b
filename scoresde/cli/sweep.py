"""Sweeps (-m): a model trained once for every run that differs only in sampling or evaluation options, and the
summary table of the sweep, whose columns are the metrics a run prints."""
import hashlib
import json
import os
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

SUMMARY = ("train_steps", "train_seconds", "nfe_sample", "sample_seconds", "swd", "swd_floor", "support", "weights_tv",
           "logp_gap_per_dim", "class_purity", "class_accuracy", "class_score", "class_score_real", "class_recognised",
           "class_recognised_real", "class_recognised_noise", "classifier_accuracy",
           "nfe_inpaint", "inpaint_seconds", "inpaint_rmse", "inpaint_known_error", "inpaint_weights_tv",
           "inpaint_logp_gap_per_dim",
           "nll", "exact_nll", "bpd", "nfe_likelihood", "likelihood_seconds", "elbo", "elbo_bpd", "elbo_stderr", "fid",
           "kid", "kid_std", "fid_num", "fid_seconds", "precision", "recall", "density", "coverage",
           "precision_floor", "recall_floor", "density_floor", "coverage_floor", "fd_dinov2", "fd_dinov2_kid",
           "fd_dinov2_precision", "fd_dinov2_recall", "fd_dinov2_density", "fd_dinov2_coverage")

NOTES = {"nll": "nats per point, of the density of the data as the network sees it (pixels scaled to [-1, 1])",
         "bpd": "bits per dimension of the data in its own units (8-bit pixels: of the dequantized levels)",
         "elbo": "a bound on nll, in the same units",
         "swd_floor": "the SWD between two sets of exact draws of this size: swd at or below it is sampling noise",
         "precision_floor": "of exact draws of the same count: precision, recall, density and coverage are read "
                            "against their _floor values"}
"""What the summary prints beside a metric whose units or meaning are not obvious from its name."""


def cached_training(cfg, keys=("sde", "model", "data", "train", "loss", "seed", "ckpt")):
    """In a Hydra sweep, where a model trained with exactly this config is kept (sweep dir/.trained/HASH), so
    that a sweep over sampling or evaluation options trains once; None outside a sweep."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    spec = json.dumps({k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in keys}, sort_keys=True)
    return Path(hydra_cfg.sweep.dir) / ".trained" / hashlib.sha1(spec.encode()).hexdigest()[:16] / "checkpoint.pt"


def keep_for_sweep(checkpoint, cached):
    """Copy a run's checkpoint to the sweep's cache (a temporary file, then a rename)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.tmp.{os.getpid()}")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, cached)


class SweepSummary(Callback):
    """At the end of a sweep, summary.md in the sweep directory: one row per run, its overrides and metrics, with a
    column for each metric of COLUMNS that some run reported."""

    COLUMNS = SUMMARY

    def on_multirun_end(self, config, **kwargs):
        root = Path(config.hydra.sweep.dir)
        runs = []
        for metrics_file in sorted(root.glob("*/metrics.json"), key=lambda p: int(p.parent.name) if
                                   p.parent.name.isdigit() else 0):
            overrides = OmegaConf.load(metrics_file.parent / ".hydra" / "overrides.yaml")
            runs.append((metrics_file.parent.name, " ".join(overrides), json.loads(metrics_file.read_text())))
        if not runs:
            return
        columns = [k for k in self.COLUMNS if any(k in metrics for _, _, metrics in runs)]
        rows = [f"| {name} | {overrides} | " + " | ".join(_cell(metrics.get(k)) for k in columns) + " |"
                for name, overrides, metrics in runs]
        head = "| run | overrides | " + " | ".join(columns) + " |"
        text = "\n".join([head, "|" + "---|" * (len(columns) + 2), *rows, ""])
        (root / "summary.md").write_text(text)
        print(f"sweep summary: {root / 'summary.md'}\n{text}")


def _cell(value):
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
