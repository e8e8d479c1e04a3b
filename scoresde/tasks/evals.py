"""The evaluations of a run: each built from its file in conf/eval/, checked against the data and model before
training (``setup``), then ``__call__(pipe, context) -> metrics`` on the trained model, writing its own files on
the main process. Those of the samples apply where the task drew samples."""
import inspect

import numpy as np

from sde.errors import ConfigError, check_int, config_scope
from scoresde.data import GaussianMixture
from scoresde.evaluation import classifier_report, mixture_report, prdc, sample_quality
from scoresde.evaluation.classify import applies as classifier_applies
from solvers import ELBO, ODELikelihood


class Quality:
    """The samples against fresh data (the "quality" stream): swd beside swd_floor, support where the data's
    density is known (scoresde.evaluation.sample_quality)."""

    name = "quality"

    def setup(self, data, model, context):
        """Nothing to prepare."""

    def __call__(self, pipe, context):
        if context.samples is None:
            return {}
        return sample_quality(context.samples, pipe.data, context.seeds.generator("quality"), labels=context.labels)


class Mixture:
    """For Gaussian-mixture data, the samples against the exact mixture (scoresde.evaluation.mixture_report):
    weights_tv, component means and stds, logp_gap_per_dim; other data sets are skipped."""

    name = "mixture"

    def setup(self, data, model, context):
        """Nothing to prepare."""

    def __call__(self, pipe, context):
        if context.samples is None or not isinstance(pipe.data, GaussianMixture):
            return {}
        return mixture_report(pipe.data, context.samples, context.labels)


class PRDC:
    """Precision, recall, density and coverage of the samples in the data space (scoresde.evaluation.prdc)
    against as many fresh data points, at most ``num``, from the "prdc" stream, with ``k`` and ``k_density``
    neighbours; beside them their exact-sample values (_floor: a second data draw against the first), so that a
    model is read against what exact samples of the same count give. For continuous data; 8-bit images are
    scored in their pixels by eval=fid with scoresde.evaluation.PixelFeatures."""

    name = "prdc"

    def __init__(self, num=10000, k=3, k_density=5):
        self.num, self.k = check_int("num", num, 2), check_int("k", k)
        self.k_density = check_int("k_density", k_density)

    def setup(self, data, model, context):
        if data.levels is not None:
            raise ConfigError(f"eval=[prdc] scores continuous data in their own space; {data!r} holds 8-bit images: "
                              "use eval=[fid] with eval.fid.features._target_=scoresde.evaluation.PixelFeatures")

    def __call__(self, pipe, context):
        if context.samples is None:
            return {}
        x = context.samples[: self.num].cpu()
        gen = context.seeds.generator("prdc")
        real, floor = pipe.data.sample(len(x), gen), pipe.data.sample(len(x), gen)
        with config_scope(f"eval.{self.name}"):
            scores = prdc(real, x, self.k, self.k_density)
            exact = prdc(real, floor, self.k, self.k_density)
        return {**scores, **{f"{name}_floor": value for name, value in exact.items()}, "prdc_num": len(x)}


class Classifier:
    """A classifier of the real data judges the samples (scoresde.evaluation.classifier_report, the
    "classifier" stream): class_score and class_recognised beside the real and noise figures. It applies to
    labelled images small enough (scoresde.evaluation.classify.applies); ``required`` asks for it on any
    labelled data and refuses data without labels."""

    name = "classifier"

    def __init__(self, required=False):
        if required not in (True, False):
            raise ConfigError(f"required={required!r} is invalid: expected true or false", "required")
        self.required = required
        self.applies = False

    def setup(self, data, model, context):
        if self.required and data.num_classes is None:
            raise ConfigError(f"eval.classifier.required=true needs labelled data; {data!r} has no labels")
        self.applies = self.required or classifier_applies(data)

    def __call__(self, pipe, context):
        if context.samples is None or not self.applies:
            return {}
        return classifier_report(context.samples, pipe.data, context.seeds.generator("classifier"), context.labels)


def _estimator(cls, options):
    """``cls(**options)``, an unknown option refused in one line that lists those ``cls`` takes."""
    params = inspect.signature(cls).parameters
    for key in options:
        if key not in params:
            raise ConfigError(f"{key} is not an option of {cls.__module__}.{cls.__name__}: it takes "
                              f"num, batch, conditional, dequant_draws, {', '.join(params)}", key)
    return cls(**options)


class HeldOut:
    """The skeleton of an evaluation on ``num`` held-out points (the "test_points" stream, drawn before
    training), ``batch`` at a time, 8-bit data dequantized ``dequant_draws`` times per point, given their labels
    when ``conditional`` (a conditional model). ``estimate`` returns the per-point columns and the pipeline's
    stats; where the data's density is known, exact_nll beside them; likelihood.npz holds x and the columns."""

    name = None

    def __init__(self, num=1000, batch=1000, conditional=False, dequant_draws=1):
        self.num, self.batch = check_int("num", num), check_int("batch", batch)
        self.dequant_draws = check_int("dequant_draws", dequant_draws)
        self.conditional = bool(conditional)

    def setup(self, data, model, context):
        gen = context.seeds.generator
        self.x = data.test(self.num, gen("test_points"))
        self.y = None
        if self.conditional:
            if getattr(model, "num_classes", None) is None:
                raise ConfigError(f"eval.{self.name}.conditional=true needs a conditional model (trained with "
                                  "train.cond_drop > 0, or model=oracle)")
            self.y = data.test(self.num, gen("test_points"), labels=True)[1]

    def labels_of_exact(self):
        """What data.log_prob is given besides the points."""
        return {}

    def __call__(self, pipe, context):
        with config_scope(f"eval.{self.name}"):
            columns, stats = self.estimate(pipe, context)
        metrics = self.metrics(pipe, columns, stats)
        columns = {k: v.numpy() for k, v in columns.items()}
        if pipe.data.has_log_prob:
            exact = -pipe.data.log_prob(stats["x"].double().cpu(), **self.labels_of_exact())
            metrics["exact_nll"] = exact.mean().item()
            columns["exact_nll"] = exact.numpy()
        if context.main:
            np.savez(context.out / "likelihood.npz", x=stats["x"].cpu().numpy(), **columns)
        return metrics


class NLL(HeldOut):
    """−log p(x) of the held-out points by the probability-flow ODE with the divergence alongside
    (solvers.ODELikelihood, built from the other options): nll, bpd, nfe_likelihood, likelihood_seconds.
    Bits/dim below 0 on quantized data is impossible and ends the run in one line."""

    name = "ode"

    def __init__(self, num=1000, batch=1000, conditional=False, dequant_draws=1, **options):
        super().__init__(num, batch, conditional, dequant_draws)
        self.method = options.get("method", "dopri5")
        self.likelihood = _estimator(ODELikelihood, options)

    def labels_of_exact(self):
        return {} if self.y is None else {"labels": self.y}

    def estimate(self, pipe, context):
        nll, stats = pipe.nll(self.x, batch=self.batch, likelihood=self.likelihood, generator=context.generator,
                              info=True, progress=context.progress, dequant_draws=self.dequant_draws, labels=self.y)
        return {"nll": nll}, stats

    def metrics(self, pipe, columns, stats):
        nll = columns["nll"]
        metrics = {"nll": nll.mean().item(), "bpd": pipe.bits_per_dim(nll), "nfe_likelihood": stats["nfe"],
                   "likelihood_seconds": stats["seconds"]}
        if pipe.data.levels is not None and metrics["bpd"] < 0:
            raise ConfigError(f"eval.ode: bits/dim came out {metrics['bpd']:.3g} < 0, impossible for "
                              f"{pipe.data.levels}-level data: the likelihood solve (method={self.method}) is "
                              "inaccurate for this model; use eval.ode.method=dopri5 or more eval.ode.steps")
        return metrics


class Bound(HeldOut):
    """The continuous-time variational bound on −log p(x) of the held-out points with its Monte Carlo standard
    error (solvers.ELBO, built from the other options): elbo, elbo_bpd, elbo_stderr (of the mean), nfe_elbo,
    elbo_seconds."""

    name = "elbo"

    def __init__(self, num=1000, batch=1000, conditional=False, dequant_draws=1, **options):
        super().__init__(num, batch, conditional, dequant_draws)
        self.bound = _estimator(ELBO, options)

    def estimate(self, pipe, context):
        bound, stderr, stats = pipe.elbo(self.x, batch=self.batch, elbo=self.bound, generator=context.generator,
                                         info=True, progress=context.progress, dequant_draws=self.dequant_draws)
        return {"elbo": bound, "elbo_stderr": stderr}, stats

    def metrics(self, pipe, columns, stats):
        bound, stderr = columns["elbo"], columns["elbo_stderr"]
        return {"elbo": bound.mean().item(), "elbo_bpd": pipe.bits_per_dim(bound),
                "elbo_stderr": stderr.norm().item() / len(stderr), "nfe_elbo": stats["nfe"],
                "elbo_seconds": stats["seconds"]}
