"""FID and KID of the model's samples against the training images, at the end of training and, every
``every`` steps, during it."""
from sde.errors import ConfigError, check_int, config_scope
from scoresde.evaluation import FID
from scoresde.pipeline import Clock, Pipeline, instantiate_config
from scoresde.training import distributed


def log_fid(out, step, scores):
    """A row (step, fid, kid) of fid_log.csv, replacing rows of this step or later (a resumed run's)."""
    path = out / "fid_log.csv"
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    rows = [r for r in rows if int(r.split(",")[0]) < step] + [f"{step},{scores['fid']:.6g},{scores['kid']:.6g}"]
    path.write_text("\n".join(["step,fid,kid", *rows]) + "\n")


class FIDScore:
    """FID, KID and kid_std of ``num`` samples (drawn as the task draws them: the run's solver, sampling
    classes and guidance, from the "fid" stream) against the training images, through ``features`` (a config
    node of a callable uint8 (N, C, H, W) -> (N, F) built with the device), the reference statistics kept in
    ``cache``; metrics fid, kid, kid_std, fid_num, fid_seconds and a row of fid_log.csv. With ``every`` > 0
    also during training, every that many steps, on the EMA model (``callback``)."""

    name = "fid"

    def __init__(self, num=10000, every=0, cache="~/.cache/score-sde/fid", features=None):
        self.num, self.every = check_int("num", num, 2), check_int("every", every, 0)
        if features is None:
            raise ConfigError("features must be set: the feature network, e.g. scoresde.evaluation.InceptionFeatures",
                              "features")
        self.cache, self.features = cache, features
        self.scored = {}

    def setup(self, data, model, context):
        """The feature network built and the reference statistics read from the cache or computed, before
        training (errors named by the option, under the evaluation's key where it is built)."""
        if data.levels is None or len(data.shape) != 3:
            raise ConfigError(f"eval=[fid] needs 8-bit images (FID compares them through an image network); {data!r} "
                              f"holds {'continuous ' if data.levels is None else ''}points of shape "
                              f"{tuple(data.shape)}")
        features = instantiate_config("features", self.features, device=context.device)
        self.fid = FID(data, features, cache=self.cache, seed=context.seeds["fid_reference"],
                       progress=context.progress is True)
        with distributed.main_first():
            self.fid.reference()
        self.fid.features = distributed.split_rows(self.fid.features)

    def score(self, sde, model, data, context, progress=False):
        """The scores of ``num`` samples of ``model`` and the seconds they took."""
        pipe, s = Pipeline(sde, model, data, context.device), context.sampling
        gen = context.seeds.generator("fid", context.device)

        def batches():
            for start in range(0, self.num, s.batch):
                yield pipe.sample(min(s.batch, self.num - start), context.solver, batch=s.batch, generator=gen,
                                  progress=progress, classes=s.classes, guidance=s.guidance)
        with Clock(context.device) as clock, config_scope("sample"):
            scores = self.fid(batches())
        return dict(scores, fid_seconds=clock.seconds)

    def callback(self, sde, data, context):
        """The training callback (every ``every`` steps), or None when ``every`` is 0."""
        return FIDDuringTraining(self, sde, data, context) if self.every else None

    def __call__(self, pipe, context):
        step = context.train_step
        metrics = self.scored.get(step) or self.score(pipe.sde, pipe.model, pipe.data, context, context.progress)
        if step is not None and context.main:
            log_fid(context.out, step, metrics)
        return metrics


class FIDDuringTraining:
    """A training callback: every ``fid.every`` steps, FID and KID of the EMA model into fid_log.csv, kept in
    ``fid.scored`` by step so that the final step is not scored twice."""

    def __init__(self, fid, sde, data, context):
        self.fid, self.sde, self.data, self.context = fid, sde, data, context
        self.every = fid.every

    def __call__(self, step, ema_model):
        scores = self.fid.scored[step] = self.fid.score(self.sde, ema_model, self.data, self.context)
        if distributed.is_main_process():
            log_fid(self.context.out, step, scores)
            print(f"step {step}: fid {scores['fid']:.4g}, kid {scores['kid']:.4g}", flush=True)
