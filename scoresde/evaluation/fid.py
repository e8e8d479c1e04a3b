"""Fréchet and kernel distances of samples to the training images in the feature space of an image network
(FID, KID; Heusel et al. 2017, Bińkowski et al. 2018).

A feature network is any callable taking uint8 images (N, C, H, W) to features (N, F), with an optional ``name``
that identifies it (and its weights) in the cache of reference statistics. ``InceptionFeatures`` is the standard
one: torch-fidelity's port of the TensorFlow Inception-v3 that FID is defined with (images of any size resized as
the TensorFlow reference does; 2048 pool features).
"""
import hashlib
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sde.errors import ConfigError, check_int

from .prdc import DENSITY_COVERAGE_K, PRECISION_RECALL_K, prdc

DEFAULT_CACHE = Path("~/.cache/score-sde/fid")
CACHE_VERSION = 1


def frechet_distance(mu1, cov1, mu2, cov2):
    """d² = |μ₁ − μ₂|² + tr(C₁ + C₂ − 2 (C₁C₂)^{1/2}), the squared 2-Wasserstein distance of N(μ₁, C₁) and
    N(μ₂, C₂), in float64. tr (C₁C₂)^{1/2} = Σ √λᵢ over the eigenvalues of the symmetric positive semi-definite
    C₁^{1/2} C₂ C₁^{1/2} (similar to C₁C₂), both eigen-problems symmetric, so singular covariances (fewer points
    than features) need no regularisation. Rounding below zero is returned as 0."""
    mu1, mu2, cov1, cov2 = (torch.as_tensor(v).to("cpu", torch.float64) for v in (mu1, mu2, cov1, cov2))
    if cov1.ndim != 2 or cov1.shape != cov2.shape or mu1.shape != mu2.shape or cov1.shape != (len(mu1),) * 2:
        raise ConfigError(f"means of shapes {tuple(mu1.shape)}, {tuple(mu2.shape)} and covariances of shapes "
                          f"{tuple(cov1.shape)}, {tuple(cov2.shape)} do not fit: expected (F,) and (F, F)")
    w, v = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = root1 @ cov2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return max(d2.item(), 0.0)


def polynomial_mmd2(x, y):
    """The unbiased estimate of MMD² with the kernel k(a, b) = (a·b / F + 1)³ between the rows of x (m, F) and
    y (n, F): mean k over pairs i ≠ j within x, plus the same within y, minus twice the mean k over all pairs
    across."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    m, n, dim = len(x), len(y), x.shape[1]

    def within(a):
        k = (a @ a.T / dim + 1) ** 3
        return (k.sum() - k.diagonal().sum()) / (len(a) * (len(a) - 1))

    return (within(x) + within(y) - 2 * ((x @ y.T / dim + 1) ** 3).sum() / (m * n)).item()


def kid(f1, f2, subsets=100, subset_size=1000, generator=None):
    """Kernel Inception Distance: polynomial_mmd2 of ``subsets`` pairs of random subsets of ``subset_size`` rows
    (fewer when a set is smaller; distinct rows within a subset) of the feature sets f1 and f2; returns the mean
    and the standard deviation over the subsets."""
    subsets = check_int("subsets", subsets)
    size = min(check_int("subset_size", subset_size, 2), len(f1), len(f2))
    if size < 2:
        raise ConfigError(f"KID needs at least 2 feature rows in each set; got {len(f1)} and {len(f2)}")
    f1, f2 = torch.as_tensor(f1), torch.as_tensor(f2)
    values = []
    for _ in range(subsets):
        i = torch.randperm(len(f1), generator=generator)[:size].to(f1.device)
        j = torch.randperm(len(f2), generator=generator)[:size].to(f2.device)
        values.append(polynomial_mmd2(f1[i], f2[j]))
    values = np.array(values)
    return float(values.mean()), float(values.std())


class Moments:
    """Running mean μ and covariance C = Σ (f − μ)(f − μ)ᵀ / (n − 1) of feature rows, in float64 on their
    device, summed around the first batch's mean so that a large common offset does not cancel."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def add(self, f):
        f = f.reshape(len(f), -1).double()
        if self.shift is None:
            self.shift = f.mean(0)
            self.s1, self.s2 = torch.zeros_like(self.shift), torch.zeros(f.shape[1], f.shape[1], dtype=f.dtype,
                                                                         device=f.device)
        d = f - self.shift
        self.s1 += d.sum(0)
        self.s2 += d.T @ d
        self.n += len(f)

    def result(self):
        """(μ, C) as float64 numpy arrays."""
        if self.n < 2:
            raise ConfigError(f"FID needs at least 2 images; got {self.n}")
        m = self.s1 / self.n
        cov = (self.s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        return (self.shift + m).cpu().numpy(), cov.cpu().numpy()


def to_uint8(x, data):
    """Images in the data's range to the 8-bit values of its levels: the level k that holds each value
    (data.quantize), as k itself for 256 levels and as round(255 k / (levels − 1)) for fewer."""
    k = data.quantize(x)
    if data.levels < 256:
        k = torch.round(k * 255.0 / (data.levels - 1)).long()
    return k.to(torch.uint8)


def feature_name(features):
    """What identifies a feature network in the cache: its ``name``, else its class."""
    return getattr(features, "name", None) or f"{type(features).__module__}.{type(features).__qualname__}"


def inception_weights(weights, url):
    """The Inception weight file: ``weights`` when given, else the file torch-fidelity would have downloaded
    into torch.hub's cache (TORCH_HOME); a ConfigError says how to provide a missing one."""
    if weights is not None:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights={str(path)!r} is not a file: give the path of torch-fidelity's Inception "
                              f"weights (download {url})", "weights")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ConfigError(f"the Inception weights are not in torch-fidelity's cache ({path} is missing) and nothing "
                          f"is downloaded during a run: download {url} to that path, or anywhere and give its path "
                          "as weights=PATH", "weights")
    return path


class InceptionFeatures:
    """torch-fidelity's Inception-v3 with the TensorFlow FID weights: uint8 images (N, C, H, W) of any size
    (resized to 299 × 299 as TensorFlow 1 did; one channel repeated to three) → (N, 2048) pool features, in
    ``batch``-sized passes on ``device``. ``weights``: the weight file (default: torch-fidelity's cached
    download); nothing is downloaded."""

    def __init__(self, weights=None, device="cpu", batch=200):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
        except Exception as e:  # noqa: BLE001 - a missing package, or a torchvision that does not fit torch
            raise ConfigError(f"FID needs the torch-fidelity package, which cannot be imported ({type(e).__name__}: "
                              f"{e}): install it with pip install -e \".[fid]\" (or pip install torch-fidelity)"
                              .splitlines()[0]) from None
        self.batch = check_int("batch", batch)
        path = inception_weights(weights, URL_INCEPTION_V3)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        except Exception as e:  # noqa: BLE001 - whatever torch.load or load_state_dict raise on a wrong file
            raise ConfigError(f"weights={str(path)!r} cannot be loaded as torch-fidelity's Inception weights "
                              f"({type(e).__name__}: {e})".splitlines()[0], "weights") from None
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.name = f"torch-fidelity-inception-v3-pool2048:{path.name}"

    def __call__(self, images):
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"Inception features need uint8 images (N, 1 or 3, H, W); got {x.dtype} of shape "
                              f"{tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        with torch.inference_mode():
            return torch.cat([self.net(part.to(self.device))[0] for part in x.split(self.batch)])


class Reference:
    """Statistics of the reference images' features: mean (F,), covariance (F, F), ``kid_features`` (a random
    subset of the rows, for KID and PRDC), ``num`` images; ``path`` of the cache file they came from or went to."""

    def __init__(self, mean, cov, kid_features, num, path=None):
        self.mean, self.cov, self.kid_features, self.num, self.path = mean, cov, kid_features, int(num), path


class FID:
    """FID and KID of samples against the training images of ``data`` (8-bit images: samples are rounded to
    its levels first, as data.quantize defines) through the feature network ``features``; with ``prdc`` also
    precision and recall (neighbourhoods of ``k`` rows) and density and coverage (``k_density`` rows) between
    as many of the stored reference rows (a seeded choice) as there are samples and as many samples
    (scoresde.evaluation.prdc).

    The reference statistics (mean, covariance and ``kid_reference`` stored feature rows, for KID and PRDC) of
    ``reference_num`` training images (None: the whole training split of a finite set, else 10000 draws) are
    computed once and kept in ``cache`` (None: ~/.cache/score-sde/fid), keyed by the data set (its class and spec, and a digest of the images, so a moved folder
    still hits and a changed file misses), their number and shape, and the feature network's name; the file is
    replaced atomically.
    """

    def __init__(self, data, features, cache=DEFAULT_CACHE, batch=500, reference_num=None, kid_subsets=100,
                 kid_subset_size=1000, kid_reference=10000, seed=0, progress=False, prdc=False,
                 k=PRECISION_RECALL_K, k_density=DENSITY_COVERAGE_K):
        if data.levels is None or len(data.shape) != 3 or data.levels > 256:
            raise ConfigError(f"FID needs 8-bit images (levels up to 256, shape (C, H, W)); {data!r} has "
                              f"{'no levels' if data.levels is None else f'{data.levels} levels'}")
        self.data, self.features, self.cache = data, features, Path(str(cache or DEFAULT_CACHE)).expanduser()
        self.batch = check_int("batch", batch)
        self.reference_num = None if reference_num is None else check_int("reference_num", reference_num, 2)
        self.kid_subsets, self.kid_subset_size = check_int("kid_subsets", kid_subsets), check_int(
            "kid_subset_size", kid_subset_size, 2)
        self.kid_reference = check_int("kid_reference", kid_reference, 2)
        self.seed, self.progress = int(seed), progress
        if prdc not in (True, False):
            raise ConfigError(f"prdc={prdc!r} is invalid: expected true or false", "prdc")
        self.prdc, self.k, self.k_density = prdc, check_int("k", k), check_int("k_density", k_density)
        self._reference = None

    def reference_images(self):
        """The reference images as uint8 batches: the training split in its order, or seeded draws."""
        data = self.data
        if hasattr(data, "train_index") and hasattr(data, "points"):
            rows = data.train_index[: self.reference_num]
            for start in range(0, len(rows), self.batch):
                yield to_uint8(data.points(rows[start: start + self.batch]), data)
            return
        gen = torch.Generator().manual_seed(self.seed)
        total = self.reference_num or 10000
        for start in range(0, total, self.batch):
            yield to_uint8(data.sample(min(self.batch, total - start), gen), data)

    def cache_key(self):
        """The description the cache file is named by and checked against."""
        digest, num = hashlib.blake2b(digest_size=16), 0
        for images in self.reference_images():
            digest.update(images.contiguous().numpy().tobytes())
            num += len(images)
        return {"version": CACHE_VERSION, "data": type(self.data).__name__, "spec": self.data.spec(), "images": num,
                "digest": digest.hexdigest(), "features": feature_name(self.features),
                "kid_reference": self.kid_reference, "seed": self.seed}

    def reference(self):
        """The reference statistics: from this object, else from the cache file, else computed and cached."""
        if self._reference is not None:
            return self._reference
        key = self.cache_key()
        text = json.dumps(key, sort_keys=True)
        shape = "x".join(str(n) for n in self.data.shape)
        path = self.cache / (f"{type(self.data).__name__}-{shape}-{key['images']}-"
                             f"{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}.npz")
        self._reference = read_reference(path, text)
        if self._reference is None:
            self._reference = self.compute_reference(key["images"], path)
            try:
                write_reference(path, text, self._reference)
            except OSError as e:
                raise ConfigError(f"the FID cache folder {str(self.cache)!r} cannot hold the reference statistics "
                                  f"({e})") from None
        return self._reference

    def compute_reference(self, num, path):
        """Mean and covariance of the features of the ``num`` reference images, and a seeded choice of rows."""
        moments, keep = Moments(), []
        chosen = torch.randperm(num, generator=torch.Generator().manual_seed(self.seed))[: self.kid_reference]
        mask = torch.zeros(num, dtype=torch.bool)
        mask[chosen] = True
        start = 0
        for images in tqdm(self.reference_images(), total=math.ceil(num / self.batch), disable=not self.progress,
                           desc="FID reference", dynamic_ncols=True):
            f = torch.as_tensor(self.features(images))
            moments.add(f)
            keep.append(f[mask[start: start + len(f)].to(f.device)].float().cpu())
            start += len(f)
        mean, cov = moments.result()
        return Reference(mean, cov, torch.cat(keep).numpy(), num, path)

    def __call__(self, samples):
        """{"fid", "kid", "kid_std", "fid_num"} of ``samples``: a tensor (N, C, H, W) in the data's range, or an
        iterable of such batches; with ``prdc`` also "precision", "recall", "density", "coverage" and
        "prdc_num", the rows of each side they compared."""
        scoring = self.scoring()
        for x in samples.split(self.batch) if torch.is_tensor(samples) else samples:
            scoring.add(x)
        return scoring.result()

    def scoring(self):
        """An accumulator of sample batches (``add``) whose ``result()`` is what __call__ returns, so that one
        stream of samples can be scored by several feature networks."""
        return Scoring(self, self.reference())


class Scoring:
    """The features of the samples given so far to a FID (``add``), and their scores (``result``)."""

    def __init__(self, fid, ref):
        self.fid, self.ref, self.moments, self.kept = fid, ref, Moments(), []

    def add(self, x):
        fid = self.fid
        if tuple(x.shape[1:]) != tuple(fid.data.shape):
            raise ConfigError(f"samples of shape {tuple(x.shape[1:])} do not fit the data's shape "
                              f"{tuple(fid.data.shape)}")
        for part in x.split(fid.batch):
            f = torch.as_tensor(fid.features(to_uint8(part.detach(), fid.data)))
            self.moments.add(f)
            self.kept.append(f.float())

    def result(self):
        fid, ref = self.fid, self.ref
        mean, cov = self.moments.result()
        features = torch.cat(self.kept)
        value, std = kid(torch.from_numpy(ref.kid_features).to(features.device), features, fid.kid_subsets,
                         fid.kid_subset_size, torch.Generator().manual_seed(fid.seed + 1))
        scores = {"fid": frechet_distance(ref.mean, ref.cov, mean, cov), "kid": value, "kid_std": std,
                  "fid_num": self.moments.n}
        if fid.prdc:
            num = min(len(features), len(ref.kid_features))
            rows = torch.randperm(len(ref.kid_features), generator=torch.Generator().manual_seed(fid.seed + 2))[:num]
            real = torch.from_numpy(ref.kid_features[rows.numpy()]).to(features.device)
            scores.update(prdc(real, features[:num], fid.k, fid.k_density), prdc_num=num)
        return scores


def read_reference(path, key):
    """The Reference in the cache file ``path`` when it exists and was written for ``key``, else None."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return Reference(f["mean"], f["cov"], f["kid_features"], int(f["num"]), path)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def write_reference(path, key, ref):
    """Writes the Reference to ``path`` atomically (a temporary file in the same folder, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(key), mean=ref.mean, cov=ref.cov, kid_features=ref.kid_features,
                     num=np.array(ref.num))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
