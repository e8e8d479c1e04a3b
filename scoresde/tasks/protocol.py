"""task=fid_protocol: the papers' FID protocol, a checkpoint scored as figures are reported."""
import json

import torch

from sde.errors import ConfigError, check_int, config_scope
from scoresde.pipeline import Clock, instantiate_config
from scoresde.training.checkpoint import write_output

from .fid import LOGGED, check_images, prepared_fid, renamed


class FIDProtocol:
    """FID (and KID, precision, recall, density and coverage) of ``num`` samples against the whole training
    split, for each of ``seeds`` independent sample sets, as papers report it (EDM: 50,000 samples, the minimum
    over three sets): each set's scores, their mean and their minimum, for every feature network of
    ``features`` (a mapping key → config node: fid for Inception, fd_dinov2, ...), all from one stream of
    samples per set; ``use`` names the keys of ``features`` to score with (None: all). Samples are drawn with
    the run's solver, classes and guidance, ``batch`` at a time (the run's sample.batch), set i from the seed
    ``protocol`` stream + i. Writes fid_protocol.json and fid_protocol.md (the table, with the solver, its NFE
    and the counts); metrics {key}_min, {key}_mean and
    {key}_seeds for each key, nfe_sample, protocol_num and protocol_seconds."""

    name = "fid_protocol"

    def __init__(self, num=50000, seeds=3, cache="~/.cache/score-sde/fid", features=None, use=None, prdc=True, k=3,
                 k_density=5, reference_num=None):
        self.num, self.seeds = check_int("num", num, 2), check_int("seeds", seeds)
        features = dict(features or {})
        if use is not None:
            use = [use] if isinstance(use, str) else list(use)
            unknown = [key for key in use if key not in features]
            if unknown or not use:
                raise ConfigError(f"use={use} is invalid: expected a list of the feature networks "
                                  f"{', '.join(features) or '(none given)'}", "use")
            features = {key: features[key] for key in use}
        if not features:
            raise ConfigError("features must name at least one feature network: {fid: {_target_: "
                              "scoresde.evaluation.InceptionFeatures}}", "features")
        for key in features:
            if not isinstance(key, str) or not key.isidentifier():
                raise ConfigError(f"features.{key} is not a name such as fid or fd_dinov2", "features")
        if prdc not in (True, False):
            raise ConfigError(f"prdc={prdc!r} is invalid: expected true or false", "prdc")
        self.features, self.cache, self.prdc = features, cache, prdc
        self.k, self.k_density = check_int("k", k), check_int("k_density", k_density)
        self.reference_num = None if reference_num is None else check_int("reference_num", reference_num, 2)

    def setup(self, data, model, context):
        """Every feature network built and its reference statistics read or computed, before training."""
        check_images(data, "task=fid_protocol needs 8-bit images")
        self.fids = {}
        for key, node in self.features.items():
            with config_scope(f"features.{key}"):
                features = instantiate_config("features", node, device=context.device)
            self.fids[key] = prepared_fid(data, features, context, cache=self.cache, reference_num=self.reference_num,
                                          prdc=self.prdc, k=self.k, k_density=self.k_density)

    def draw(self, pipe, context, seed):
        """The scores of one sample set, keyed by each feature network's names, and the NFE per sample."""
        s = context.sampling
        gen = torch.Generator(context.device).manual_seed(seed)
        scorings = {key: fid.scoring() for key, fid in self.fids.items()}
        nfe = None
        with config_scope("sample"):
            for start in range(0, self.num, s.batch):
                x, stats = pipe.sample(min(s.batch, self.num - start), context.solver, batch=s.batch, generator=gen,
                                       info=True, progress=context.progress, classes=s.classes, guidance=s.guidance)
                nfe = int(stats["nfe"]) if float(stats["nfe"]).is_integer() else stats["nfe"]
                for scoring in scorings.values():
                    scoring.add(x)
        scores = {}
        for key, scoring in scorings.items():
            scores.update(renamed(scoring.result(), key))
        return scores, nfe

    def __call__(self, pipe, context):
        base = context.seeds["protocol"]
        rows = []
        with Clock(context.device) as clock:
            for i in range(self.seeds):
                scores, nfe = self.draw(pipe, context, base + i)
                rows.append({"seed": base + i, **scores})
        names = [n for key in self.fids for n in renamed(dict.fromkeys(LOGGED), key) if n in rows[0]]
        summary = {"solver": repr(context.solver), "nfe_sample": nfe, "num": self.num, "seeds": self.seeds,
                   "reference": {key: fid.reference().num for key, fid in self.fids.items()}, "sets": rows,
                   "mean": {n: sum(r[n] for r in rows) / len(rows) for n in names},
                   "min": {n: min(r[n] for r in rows) for n in names}, "seconds": clock.seconds}
        if context.main:
            write_output(context.out / "fid_protocol.json",
                         lambda fh: fh.write(json.dumps(summary, indent=2).encode()))
            write_output(context.out / "fid_protocol.md", lambda fh: fh.write(table(summary, names).encode()))
        metrics = {"nfe_sample": nfe, "protocol_num": self.num, "protocol_seconds": clock.seconds}
        for key in self.fids:
            metrics.update({f"{key}_min": summary["min"][key], f"{key}_mean": summary["mean"][key],
                            f"{key}_seeds": [r[key] for r in rows]})
        return metrics


def table(summary, names):
    """The protocol's Markdown table: one row per sample set, then the mean and the minimum."""
    lines = [f"Solver {summary['solver']}, {summary['nfe_sample']} network evaluations per sample; "
             f"{summary['num']} samples per set, {summary['seeds']} sets; reference: "
             + ", ".join(f"{n} training images ({key})" for key, n in summary["reference"].items()) + ".", "",
             "| set (seed) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for row in summary["sets"]:
        lines.append(f"| {row['seed']} | " + " | ".join(f"{row[n]:.4g}" for n in names) + " |")
    for what in ("mean", "min"):
        lines.append(f"| {what} | " + " | ".join(f"{summary[what][n]:.4g}" for n in names) + " |")
    return "\n".join(lines) + "\n"
