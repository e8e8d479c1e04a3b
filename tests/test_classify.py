"""The digits classifier that judges image samples: real digits score high, noise and a single repeated
class score at chance."""
import numpy as np
import pytest
import torch

from scoresde.evaluation.classify import applies, class_scores, classifier_report
from scoresde.data import Checkerboard, Digits, GaussianMixture


def test_class_scores_of_known_probabilities():
    k = 10
    uniform = class_scores(np.full((100, k), 1 / k))
    assert uniform["recognised"] == 0.0 and abs(uniform["confidence"] - 0.1) < 1e-12
    assert abs(uniform["score"] - 1) < 1e-9
    certain = class_scores(np.eye(k)[np.arange(200) % k])
    assert certain["recognised"] == 1.0 and abs(certain["score"] - k) < 1e-6
    one_class = class_scores(np.eye(k)[np.zeros(50, dtype=int)])
    assert one_class["recognised"] == 1.0 and abs(one_class["score"] - 1) < 1e-6


@pytest.mark.slow
def test_real_digits_are_recognised_and_noise_and_one_repeated_image_are_not():
    data = Digits()
    real = classifier_report(data.test(180, torch.Generator().manual_seed(9)), data, torch.Generator().manual_seed(0))
    assert real["classifier_accuracy"] > 0.95
    assert real["class_score"] > 7.5 and real["class_recognised"] > 0.95
    assert real["class_score_noise"] < 1.3 and real["class_recognised_noise"] < 0.05
    one = data.sample(1, torch.Generator().manual_seed(3)).expand(200, 1, 8, 8)
    collapsed = classifier_report(one + 0.05 * torch.randn(200, 1, 8, 8), data, torch.Generator().manual_seed(0))
    assert collapsed["class_score"] < 1.3 and max(collapsed["class_counts"]) > 190


def test_the_classifier_applies_to_labelled_images_only():
    assert applies(Digits())
    assert not applies(Checkerboard())
    assert not applies(GaussianMixture(means=[[0.0, 0.0], [1.0, 1.0]], stds=[0.1, 0.1]))
