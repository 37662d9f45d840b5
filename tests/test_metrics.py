"""Video-level metrics against scikit-learn and hand-worked examples."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, top_k_accuracy_score

from comem.metrics import (
    classification_metrics,
    confusion_matrix,
    mean_average_precision,
    mean_class_accuracy,
    per_class_average_precision,
    top_confused_pairs,
    topk_accuracy,
)


def random_single_label(seed: int, videos: int = 50, classes: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(videos, classes, generator=generator), torch.randint(
        0, classes, (videos,), generator=generator
    )


@pytest.mark.parametrize("seed", range(5))
def test_topk_accuracy_matches_sklearn(seed: int) -> None:
    scores, labels = random_single_label(seed)
    got = topk_accuracy(scores, labels, ks=(1, 2, 5))
    for k in (1, 2, 5):
        want = 100.0 * top_k_accuracy_score(labels.numpy(), scores.numpy(), k=k, labels=np.arange(7))
        assert got[f"top{k}"] == pytest.approx(want, abs=1e-4), k


def test_topk_accuracy_hand_worked() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.6, 0.3],  # ranking 1, 2, 0; label 1: top-1 hit
            [0.5, 0.2, 0.3],  # ranking 0, 2, 1; label 2: top-2 hit
            [0.2, 0.3, 0.5],  # ranking 2, 1, 0; label 0: only top-3
            [0.7, 0.1, 0.2],  # ranking 0, 2, 1; label 0: top-1 hit
        ]
    )
    labels = torch.tensor([1, 2, 0, 0])
    # k = 5 > 3 classes: every video counts as right.
    assert topk_accuracy(scores, labels, ks=(1, 2, 3, 5)) == {
        "top1": 50.0,
        "top2": 75.0,
        "top3": 100.0,
        "top5": 100.0,
    }


@pytest.mark.parametrize("seed", range(5))
def test_mean_class_accuracy_matches_balanced_accuracy(seed: int) -> None:
    scores, labels = random_single_label(seed, videos=30, classes=9)  # some classes absent from labels
    predicted = scores.argmax(dim=1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        want = 100.0 * balanced_accuracy_score(labels.numpy(), predicted)
    assert mean_class_accuracy(scores, labels) == pytest.approx(want, abs=1e-4)


def test_mean_class_accuracy_hand_worked() -> None:
    # class 0: 3 videos, 2 right; class 2: 1 video, right; class 1 has no videos and is not averaged.
    # top-1 is 75 %, but the mean over the two classes present is (2/3 + 1) / 2 = 83.33 %.
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 0, 0, 2])
    assert mean_class_accuracy(scores, labels) == pytest.approx(100 * (2 / 3 + 1) / 2)
    metrics = classification_metrics(scores, labels)
    assert metrics["top1"] == 75.0
    assert metrics["mean_class_acc"] == pytest.approx(83.3333333)


@pytest.mark.parametrize("seed", range(5))
def test_mean_average_precision_matches_sklearn_and_drops_classes_without_positives(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random((40, 8))
    targets = (rng.random((40, 8)) < 0.25).astype(np.float32)
    targets[:, [2, 5]] = 0  # no positives: dropped, not counted as AP 0
    targets[0, 0] = 1  # at least one class has positives
    present = [c for c in range(8) if targets[:, c].any()]
    want = 100.0 * np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in present])
    got = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert got == pytest.approx(want, abs=1e-6)
    assert classification_metrics(torch.from_numpy(scores), torch.from_numpy(targets)) == {
        "mAP": pytest.approx(want)
    }


def test_mean_average_precision_hand_worked() -> None:
    # class 0: positives ranked 1st and 3rd: AP = (1/1 + 2/3) / 2 = 5/6.
    # class 1: single positive ranked 2nd: AP = 1/2.  class 2: no positives, dropped.
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.5], [0.3, 0.9, 0.5], [0.1, 0.2, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (5 / 6 + 1 / 2) / 2, abs=1e-6)


def test_mean_average_precision_without_any_positive_is_nan() -> None:
    assert np.isnan(mean_average_precision(torch.rand(4, 3), torch.zeros(4, 3)))


@pytest.mark.parametrize("seed", range(3))
def test_per_class_ap_matches_sklearn_with_nan_for_classes_without_positives(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, targets = rng.random((25, 6)), (rng.random((25, 6)) < 0.3).astype(np.float32)
    targets[:, 1] = 0
    targets[0, 0] = 1
    got = per_class_average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert np.isnan(got[1])
    for c in [0, 2, 3, 4, 5]:
        if targets[:, c].any():
            want = 100.0 * average_precision_score(targets[:, c], scores[:, c])
            assert got[c] == pytest.approx(want, abs=1e-6)
        else:
            assert np.isnan(got[c])


def test_mean_average_precision_with_one_class_having_positives() -> None:
    scores = torch.tensor([[0.2, 0.9], [0.8, 0.1], [0.4, 0.5]])
    targets = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # class 0's positive is ranked first
    assert mean_average_precision(scores, targets) == pytest.approx(100.0)
    assert per_class_average_precision(scores, targets)[0] == pytest.approx(100.0)


def test_confusion_matrix_and_top_confused_pairs_hand_worked() -> None:
    # predicted (argmax): 0, 1, 1, 2, 1, 1; true: 0, 0, 0, 2, 2, 2
    scores = torch.tensor(
        [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3]]
    )
    labels = torch.tensor([0, 0, 0, 2, 2, 2])
    matrix = confusion_matrix(scores, labels)
    assert matrix.tolist() == [[1, 2, 0], [0, 0, 0], [0, 2, 1]]
    # two pairs with 2 videos each: ties broken by the true class, then the predicted one
    assert top_confused_pairs(matrix) == [(0, 1, 2), (2, 1, 2)]
    assert top_confused_pairs(matrix, limit=1) == [(0, 1, 2)]
    assert top_confused_pairs(np.eye(3, dtype=int)) == []
