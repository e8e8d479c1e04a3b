"""Steering a conditional score: class labels for a batch, and classifier-free guidance."""
import torch

from sde.errors import ConfigError, check_number, short

from .embedding import check_labels


def class_labels(classes, num, num_classes):
    """Labels for ``num`` samples: ``classes`` = None (no class: the null label, or no labels at all for an
    unconditional model), one class c, a list (sample i gets classes[i mod len]), or 'all' (every class in
    turn, i mod K, so the classes are balanced)."""
    if classes is None:
        return None
    if num_classes is None:
        raise ConfigError(f"classes={short(classes)} needs a conditional model (one trained on labelled data "
                          "with cond_drop > 0); this one has no classes", "classes")
    if isinstance(classes, str):
        if classes != "all":
            raise ConfigError(f"classes={classes!r} is invalid: expected a class, a list of classes or 'all'",
                              "classes")
        return torch.arange(num) % num_classes
    listed = [classes] if isinstance(classes, int) else list(classes) if isinstance(classes, (list, tuple)) else None
    if not listed or any(isinstance(c, bool) or not isinstance(c, int) for c in listed):
        raise ConfigError(f"classes={short(classes)} is invalid: expected a class, a list of classes or 'all'",
                          "classes")
    bad = [c for c in listed if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"classes={short(classes)}: class {bad[0]} is out of range: expected a class in "
                          f"0..{num_classes - 1}", "classes")
    return torch.tensor(listed)[torch.arange(num) % len(listed)]


class GuidedScore:
    """Classifier-free guidance (Ho and Salimans 2022) for labels y of a batch:

        s_w(x, t) = (1 + w) s(x, t, y) − w s(x, t, ∅)

    evaluated in one network pass over the batch stacked twice ([x, x] with labels [y, ∅]); w = 0 is the
    plain conditional score s(x, t, y) (one pass over the batch), and y = None the unconditional one. An
    evaluation is one network pass whatever w is; under w ≠ 0 each pass holds twice the batch's rows. A batch
    of k stacked copies of the points (as the exact divergence stacks them) takes the labels k times.
    """

    def __init__(self, model, labels=None, scale=0.0):
        self.model = model
        self.scale = check_number("scale", scale, strict=False)
        self.num_classes = getattr(model, "num_classes", None)
        if self.scale and self.num_classes is None:
            raise ConfigError(f"scale={self.scale:g} needs a conditional model (trained on labelled data with "
                              "cond_drop > 0); this one has no classes", "scale")
        if self.scale and labels is None:
            raise ConfigError(f"scale={self.scale:g} needs classes to guide towards", "scale")
        self.labels = labels

    def __call__(self, x, t):
        y = self.labels
        if y is None:
            if self.num_classes is None:
                return self.model(x, t)
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
        y = y.to(x.device)
        if len(y) and x.shape[0] != len(y) and x.shape[0] % len(y) == 0:
            y = y.repeat(x.shape[0] // len(y))
        y = check_labels(y, self.num_classes, x)
        if not self.scale:
            return self.model(x, t, y)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t2 = torch.cat([t.expand(x.shape[0])] * 2) if t.ndim else t
        null = torch.full_like(y, self.num_classes)
        cond, uncond = self.model(torch.cat([x, x]), t2, torch.cat([y, null])).chunk(2)
        return (1 + self.scale) * cond - self.scale * uncond
