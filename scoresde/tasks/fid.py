"""FID and KID of the model's samples against the training images, at the end of training and, every
``every`` steps, during it."""
from sde.errors import ConfigError, check_int, config_scope
from scoresde.evaluation import FID
from scoresde.pipeline import Clock, Pipeline, instantiate_config
from scoresde.training import distributed


LOGGED = ("fid", "kid", "precision", "recall", "density", "coverage")


def log_fid(out, step, scores, key="fid"):
    """A row (step, fid, kid[, precision, recall, density, coverage], named as renamed names them) of
    {key}_log.csv, replacing rows of this step or later (a resumed run's); rows of an older file with fewer
    columns are kept, padded with blanks."""
    path = out / f"{key}_log.csv"
    columns = ["step", *(name for name in renamed(dict.fromkeys(LOGGED), key) if name in scores)]
    old = path.read_text().splitlines() if path.exists() else []
    header = old[0].split(",") if old else columns
    columns = header if set(columns) <= set(header) else columns
    rows = []
    for line in old[1:]:
        if int(line.split(",")[0]) < step:
            values = dict(zip(header, line.split(",")))
            rows.append(",".join(values.get(c, "") for c in columns))
    rows.append(",".join(str(step) if c == "step" else f"{scores[c]:.6g}" if c in scores else "" for c in columns))
    path.write_text("\n".join([",".join(columns), *rows]) + "\n")


def check_images(data, need):
    """A ConfigError unless ``data`` are 8-bit images, the line starting with ``need``."""
    if data.levels is None or len(data.shape) != 3:
        raise ConfigError(f"{need}; {data!r} holds {'continuous ' if data.levels is None else ''}points of shape "
                          f"{tuple(data.shape)}")


def prepared_fid(data, features, context, **options):
    """A FID of ``data`` through the built feature network ``features`` with its reference statistics read or
    computed (the main process first, the others then read its cache) and its features split across the
    processes; ``options`` as FID takes them."""
    fid = FID(data, features, seed=context.seeds["fid_reference"], progress=context.progress is True, **options)
    with distributed.main_first():
        fid.reference()
    fid.features = distributed.split_rows(fid.features)
    return fid


def renamed(scores, key):
    """The scores under the evaluation's key: as they are for "fid"; else "fid" named ``key`` and every other
    score prefixed by it (fd_dinov2, fd_dinov2_kid, fd_dinov2_precision, ...)."""
    if key == "fid":
        return dict(scores)
    return {(key if name == "fid" else f"{key}_{name.removeprefix('fid_')}"): v for name, v in scores.items()}


class FIDScore:
    """FID, KID and kid_std of ``num`` samples (drawn as the task draws them: the run's solver, sampling
    classes and guidance, from the "fid" stream) against the training images, through ``features`` (a config
    node of a callable uint8 (N, C, H, W) -> (N, F) built with the device), the reference statistics kept in
    ``cache``; with ``prdc``, precision and recall (``k`` neighbours) and density and coverage (``k_density``)
    against as many stored reference rows. Metrics fid, kid, kid_std, fid_num, fid_seconds, precision, recall,
    density, coverage, prdc_num, renamed by ``key`` for other feature networks (renamed: key=fd_dinov2 gives
    fd_dinov2, fd_dinov2_kid, ...), and a row of {key}_log.csv. With ``every`` > 0 also during training, every
    that many steps, on the EMA model (``callback``)."""

    name = "fid"

    def __init__(self, num=10000, every=0, cache="~/.cache/score-sde/fid", features=None, key="fid", prdc=True,
                 k=3, k_density=5):
        self.num, self.every = check_int("num", num, 2), check_int("every", every, 0)
        if features is None:
            raise ConfigError("features must be set: the feature network, e.g. scoresde.evaluation.InceptionFeatures",
                              "features")
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"key={key!r} is invalid: expected a name such as fid or fd_dinov2", "key")
        if prdc not in (True, False):
            raise ConfigError(f"prdc={prdc!r} is invalid: expected true or false", "prdc")
        self.cache, self.features, self.key, self.name = cache, features, key, key
        self.prdc, self.k, self.k_density = prdc, check_int("k", k), check_int("k_density", k_density)
        self.scored = {}

    def setup(self, data, model, context):
        """The feature network built and the reference statistics read from the cache or computed, before
        training (errors named by the option, under the evaluation's key where it is built)."""
        check_images(data, "eval=[fid] needs 8-bit images (FID compares them through an image network)")
        features = instantiate_config("features", self.features, device=context.device)
        self.fid = prepared_fid(data, features, context, cache=self.cache, prdc=self.prdc, k=self.k,
                                k_density=self.k_density)

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
        return renamed(dict(scores, fid_seconds=clock.seconds), self.key)

    def callback(self, sde, data, context):
        """The training callback (every ``every`` steps), or None when ``every`` is 0."""
        return FIDDuringTraining(self, sde, data, context) if self.every else None

    def __call__(self, pipe, context):
        step = context.train_step
        metrics = self.scored.get(step) or self.score(pipe.sde, pipe.model, pipe.data, context, context.progress)
        if step is not None and context.main:
            log_fid(context.out, step, metrics, self.key)
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
            key = self.fid.key
            log_fid(self.context.out, step, scores, key)
            kid = scores["kid" if key == "fid" else f"{key}_kid"]
            print(f"step {step}: {key} {scores[key]:.4g}, kid {kid:.4g}", flush=True)
