"""Do samples look like the data's classes? A classifier trained on the labelled real data judges them."""
import math
import warnings

import numpy as np
import torch


def applies(data, max_dim=1024):
    """Whether ``classifier_report`` suits ``data``: labelled images of at most ``max_dim`` values each (an RBF SVM
    on larger images, CIFAR-sized, would cost minutes; ask for it explicitly to force it)."""
    return data.num_classes is not None and len(data.shape) == 3 and data.dim <= max_dim


class DataClassifier:
    """An RBF support-vector classifier with probabilities p(y | x) from pairwise coupling (Wu, Lin and Weng
    2004), fitted to ``num`` labelled training draws. Far from every training point the RBF kernel vanishes
    and p(y | x) flattens, so noise is not called a class with confidence, as a linear classifier (or the
    one-vs-rest calibration that scikit-learn proposes instead: 0.90 mean confidence on noise for digits,
    against 0.25 here) would."""

    def __init__(self, data, generator, num=5000):
        from sklearn.svm import SVC

        x, y = data.sample(num, generator, dtype=torch.float64, labels=True)
        self.num_classes = data.num_classes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.svc = SVC(gamma="scale", probability=True, random_state=0).fit(_flat(x), y.numpy())

    def probabilities(self, x):
        """p(y | x) of shape (N, num_classes), columns in class order."""
        p = np.zeros((len(x), self.num_classes))
        p[:, self.svc.classes_] = self.svc.predict_proba(_flat(x))
        return p


def class_scores(p, threshold=0.5):
    """From p(y | x) of N samples:

    - ``recognised``: the fraction with max_y p(y | x) ≥ threshold (chance, for uniform p: 1/K);
    - ``confidence``: the mean of max_y p(y | x);
    - ``score``: exp E_x KL(p(y | x) ‖ p(y)), with p(y) the mean of p(y | x) over the samples (the Inception
      score's form: 1 for samples that show no class or only one, K for confident samples of all K classes).
    """
    p = np.clip(p, 1e-12, 1.0)
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(p) - np.log(marginal))).sum(1).mean()
    top = p.max(1)
    return {"recognised": float((top >= threshold).mean()), "confidence": float(top.mean()),
            "score": float(math.exp(kl))}


def classifier_report(x, data, generator, labels=None, num_train=5000):
    """How a classifier of the real data sees the samples x, beside the same figures for held-out real
    images (what a perfect sampler gets) and for uniform noise over the data's range (what chance gets):
    ``class_recognised``, ``class_confidence``, ``class_score`` and their ``_real`` and ``_noise``
    counterparts, the classifier's held-out accuracy ``classifier_accuracy`` and ``class_counts``. For samples
    drawn for classes (``labels``), ``class_accuracy``: the share the classifier assigns to their own class
    (chance: 1/K)."""
    clf = DataClassifier(data, generator, num_train)
    n_test = min(len(x), data.test_size or len(x))
    x_real, y_real = data.test(n_test, generator, dtype=torch.float64, labels=True)
    lo, hi = data.value_range or (float(x_real.min()), float(x_real.max()))
    noise = lo + (hi - lo) * torch.rand((n_test, *data.shape), generator=generator, dtype=torch.float64)
    p_samples, p_real = clf.probabilities(x), clf.probabilities(x_real)
    out = {"classifier_accuracy": float((p_real.argmax(1) == y_real.numpy()).mean())}
    for suffix, p in (("", p_samples), ("_real", p_real), ("_noise", clf.probabilities(noise))):
        out.update({f"class_{key}{suffix}": value for key, value in class_scores(p).items()})
    out["class_counts"] = np.bincount(p_samples.argmax(1), minlength=data.num_classes).tolist()
    if labels is not None:
        out["class_accuracy"] = float((p_samples.argmax(1) == np.asarray(labels)).mean())
    return out


def _flat(x):
    return torch.as_tensor(x).detach().double().cpu().reshape(len(x), -1).numpy()
