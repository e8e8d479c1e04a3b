"""Feature networks for the Fréchet distance and precision/recall besides Inception (scoresde.evaluation.fid):
DINOv2 (Stein et al. 2023's FD-DINOv2, preprocessed as torch-fidelity's DINOv2 extractor does) and the pixels
themselves. Each is a callable taking uint8 images (N, C, H, W) to features (N, F), with a ``name`` that keys
the cache of reference statistics."""
from pathlib import Path

import torch

from sde.errors import ConfigError, check_choice, check_int

DINOV2_MODELS = {"vits14": 384, "vitb14": 768, "vitl14": 1024, "vitg14": 1536}
DINOV2_REPO = "facebookresearch/dinov2"
DINOV2_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resize_like_tensorflow1(x, size):
    """TensorFlow 1's bilinear resize without aligned corners or half-pixel centres, which torch-fidelity's
    extractors use: output index i reads the input at u = i · n_in / n_out, lerped between ⌊u⌋ and
    min(⌊u⌋ + 1, n_in − 1), along each axis."""
    for axis, n_out in ((2, size), (3, size)):
        n_in = x.shape[axis]
        u = torch.arange(n_out, dtype=torch.float32, device=x.device) * (n_in / n_out)
        lo = u.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        w = (u - lo).to(x.dtype)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        w = w.reshape(shape)
        x = x.index_select(axis, lo) * (1 - w) + x.index_select(axis, hi) * w
    return x


def _file(path, what, how):
    if not Path(path).exists():
        raise ConfigError(f"{what} {str(path)!r} is missing and nothing is downloaded during a run: {how}")
    return Path(path)


class DINOv2Features:
    """DINOv2's class-token features (ViT-S/B/L/g-14: 384, 768, 1024, 1536 wide) of uint8 images resized to
    224 × 224 as TensorFlow 1 resizes (one channel repeated to three) and normalised by ImageNet's mean and std
    in 0..255: torch-fidelity's DINOv2 extractor, built from the local copy of the DINOv2 code that torch.hub
    keeps (``repo``, default torch.hub's cache) and the weight file ``weights`` (default: the one torch.hub
    downloaded into its cache), in ``batch``-sized passes on ``device``. Nothing is downloaded: the command that
    fetches both once is in the error a missing one gives."""

    def __init__(self, model="vitl14", weights=None, repo=None, device="cpu", batch=100):
        self.model = check_choice("model", model, tuple(DINOV2_MODELS))
        self.batch = check_int("batch", batch)
        entry = f"dinov2_{self.model}"
        fetch = (f"fetch them once with python -c \"import torch; torch.hub.load('{DINOV2_REPO}', '{entry}')\" "
                 "(into torch.hub's cache, TORCH_HOME)")
        hub = Path(torch.hub.get_dir())
        repo = _file(Path(str(repo)).expanduser() if repo else hub / "facebookresearch_dinov2_main",
                     "the DINOv2 code (repo=)", f"{fetch}, or give the folder of a clone as repo=PATH")
        weights = _file(Path(str(weights)).expanduser() if weights else hub / "checkpoints" /
                        f"{entry}_pretrain.pth", "the DINOv2 weights (weights=)", f"{fetch}, or give the file "
                        f"as weights=PATH (https://dl.fbaipublicfiles.com/dinov2/{entry}/{entry}_pretrain.pth)")
        try:
            net = torch.hub.load(str(repo), entry, source="local", pretrained=False)
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - whatever the hub code, torch.load or load_state_dict raise
            raise ConfigError(f"the DINOv2 model {entry} cannot be built from repo={str(repo)!r} and "
                              f"weights={str(weights)!r} ({type(e).__name__}: {e})".splitlines()[0]) from None
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.name = f"dinov2-{self.model}-cls:{weights.name}"

    def preprocess(self, images):
        """uint8 (N, 1 or 3, H, W) → float32 (N, 3, 224, 224), normalised."""
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = resize_like_tensorflow1(x.float(), DINOV2_SIZE)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1) * 255
        return (x - mean) / std

    def __call__(self, images):
        x = _uint8_images(images, "DINOv2 features")
        with torch.inference_mode():
            return torch.cat([self.net(self.preprocess(part.to(self.device))).float() for part in x.split(self.batch)])


class PixelFeatures:
    """The pixels as features: uint8 images (N, C, H, W) → (N, C·H·W) values in [0, 1]. The data space itself,
    for small images (digits) whose distances mean something without a network."""

    name = "pixels"

    def __init__(self, weights=None, device="cpu"):
        if weights is not None:
            raise ConfigError(f"weights={weights!r}: the pixel features have no weights (give null)", "weights")
        self.device = torch.device(device)

    def __call__(self, images):
        x = _uint8_images(images, "pixel features", channels=None)
        return x.reshape(len(x), -1).to(self.device).float() / 255


def _uint8_images(images, what, channels=(1, 3)):
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or (channels and x.shape[1] not in channels):
        raise ConfigError(f"{what} need uint8 images (N, {'1 or 3' if channels else 'C'}, H, W); got {x.dtype} of "
                          f"shape {tuple(x.shape)}")
    return x
