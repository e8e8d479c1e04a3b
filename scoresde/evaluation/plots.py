"""Pictures of samples: a scatter for 2-D data, a grid for images, 2-D projections otherwise."""
import math

import numpy as np


def plot_samples(x, path, reference=None, title=None, max_points=5000, value_range=None, labels=None):
    """Writes a PNG of samples x (N, D) or (N, C, H, W); ``reference`` points are drawn underneath in grey, or
    for images a row of real ones above the samples, set apart by a band. Images are shown over ``value_range``
    (default: the samples' own 0.5–99.5 percentiles). Samples drawn for classes (``labels``) are coloured by
    class, or for images laid out one row per class."""
    x = np.asarray(x)
    if x.ndim == 4:
        ref = None if reference is None else np.asarray(reference)
        fig = _image_grid(x, value_range, ref) if labels is None else _class_rows(x, np.asarray(labels), value_range,
                                                                                ref)
    else:
        x = x.reshape(len(x), -1)[:max_points]
        ref = None if reference is None else np.asarray(reference).reshape(len(reference), -1)[:max_points]
        fig = _scatter(x, ref, None if labels is None else np.asarray(labels)[:max_points])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _scatter(x, ref, labels=None):
    d = x.shape[1]
    pairs = [(0, 1)] if d <= 2 else [(i, i + 1) for i in range(0, min(d - 1, 8), 2)][:4]
    if d == 1:
        fig, ax = _subplots(figsize=(5, 3.5))
        if ref is not None:
            ax.hist(ref[:, 0], bins=100, density=True, color="0.75", label="data")
        ax.hist(x[:, 0], bins=100, density=True, histtype="step", color="C0", label="samples")
        ax.legend()
        return fig
    fig, axes = _subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        if ref is not None:
            ax.scatter(ref[:, i], ref[:, j], s=2, c="0.75", label="data", rasterized=True)
        if labels is None:
            ax.scatter(x[:, i], x[:, j], s=2, c="C0", alpha=0.6, label="samples", rasterized=True)
        else:
            for c in np.unique(labels):
                ax.scatter(x[labels == c, i], x[labels == c, j], s=2, alpha=0.6, label=f"class {c}",
                           rasterized=True)
        ax.set_xlabel(f"x[{i}]")
        ax.set_ylabel(f"x[{j}]")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0][0].legend(loc="upper right", markerscale=4, fontsize=8)
    return fig


def _image_grid(x, value_range=None, reference=None, max_images=64):
    x = x[:max_images]
    n, c, h, w = x.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    lo, hi = value_range if value_range is not None else (np.percentile(x, 0.5), np.percentile(x, 99.5))
    scale = lambda v: np.clip((v - lo) / max(hi - lo, 1e-8), 0, 1)  # noqa: E731
    real = [] if reference is None else list(scale(reference[:cols]))
    top = (h + 1) + 2 if real else 0
    grid = np.ones((top + rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for q, image in enumerate(real):
        grid[1: 1 + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = image.transpose(1, 2, 0)
    if real:
        grid[h + 1: top] = 0.5
    for k, image in enumerate(scale(x)):
        r, q = divmod(k, cols)
        grid[top + 1 + r * (h + 1): top + 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = \
            image.transpose(1, 2, 0)
    fig, ax = _subplots(figsize=(cols * 0.8 + 1, (rows + bool(real)) * 0.8 + 1))
    ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.axis("off")
    return fig


def _class_rows(x, labels, value_range=None, reference=None, per_row=10, max_rows=10):
    """Images one row per class (up to ``per_row`` samples of each, ``max_rows`` classes), the class at left."""
    classes = np.unique(labels)[:max_rows]
    rows = [x[labels == c][:per_row] for c in classes]
    n, c, h, w = x.shape
    lo, hi = value_range if value_range is not None else (np.percentile(x, 0.5), np.percentile(x, 99.5))
    grid = np.ones((len(rows) * (h + 1) + 1, per_row * (w + 1) + 1, c))
    for r, images in enumerate(rows):
        for q, image in enumerate(np.clip((images - lo) / max(hi - lo, 1e-8), 0, 1)):
            grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = image.transpose(1, 2, 0)
    fig, ax = _subplots(figsize=(per_row * 0.8 + 1, len(rows) * 0.8 + 1))
    ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(rows))], [str(k) for k in classes])
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel("class")
    return fig


def plot_inpainting(original, observed, completions, path, value_range=None, title=None):
    """Images: one row per point, original | observed | its completions (N · m, in point order). Vectors: the
    completions' first two coordinates over the originals'."""
    original, observed, completions = (np.asarray(v) for v in (original, observed, completions))
    n = len(original)
    m = len(completions) // n
    if original.ndim != 4:
        fig = _scatter(completions.reshape(len(completions), -1), original.reshape(n, -1))
    else:
        _, c, h, w = original.shape
        lo, hi = value_range if value_range is not None else (np.percentile(original, 0.5), np.percentile(original, 99.5))
        grid = np.ones((n * (h + 1) + 1, (m + 2) * (w + 1) + 2, c))
        for r in range(n):
            row = [original[r], observed[r]] + list(completions[r * m: (r + 1) * m])
            for q, image in enumerate(row):
                left = 1 + q * (w + 1) + (q >= 2)
                grid[1 + r * (h + 1): 1 + r * (h + 1) + h, left: left + w] = \
                    np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1).transpose(1, 2, 0)
        fig, ax = _subplots(figsize=((m + 2) * 0.8 + 1, n * 0.8 + 1))
        ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
        ax.set_xticks([1 + w / 2, 1 + (w + 1) + w / 2, 2 + 2 * (w + 1) + m * (w + 1) / 2],
                      ["original", "observed", "completions"])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _subplots(*grid, **options):
    """A figure and its axes, drawn without pyplot (no global figure state, matplotlib loaded when first used)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=options.pop("figsize", None))
    return fig, fig.subplots(*grid, **options)
