"""Metrics: hand-computed figures, chunks that add up to the whole, and every refusal."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from marketplace.jobs.metrics import (
    METRIC_NAMES,
    MetricInputError,
    check_metric_applies,
    partial_score,
)


def f32(values) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def i64(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --- figures worked out by hand ----------------------------------------------------------------


def test_accuracy_takes_the_highest_score_and_gives_ties_to_the_lower_class():
    scores = f32([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.3, 0.7]])
    # Predictions 1, 0, 0 (a tie), 1 against labels 1, 1, 0, 0.
    assert partial_score("accuracy", scores, i64([1, 1, 0, 0])) == (2.0, 4)


def test_accuracy_compares_integer_labels_directly():
    assert partial_score("accuracy", i64([3, 1, 2]), i64([3, 0, 2])) == (2.0, 3)
    labels = np.array([7, 9], dtype=np.uint8)
    assert partial_score("accuracy", labels, np.array([7, 9], dtype=np.int32)) == (2.0, 2)


def test_accuracy_ranks_infinite_scores_as_numbers():
    scores = f32([[-np.inf, 0.0], [np.inf, 1e30]])
    assert partial_score("accuracy", scores, i64([1, 0])) == (2.0, 2)


def test_top_k_counts_a_label_among_the_k_highest():
    scores = f32([[0.1, 0.4, 0.3, 0.2], [0.9, 0.05, 0.03, 0.02]])
    # Sample 0: label 3 (0.2) comes third, after 0.4 and 0.3; sample 1: label 0 comes first.
    assert partial_score("top_k", scores, i64([3, 0]), k=1) == (1.0, 2)
    assert partial_score("top_k", scores, i64([3, 0]), k=2) == (1.0, 2)
    assert partial_score("top_k", scores, i64([3, 0]), k=3) == (2.0, 2)
    # Labels 0 and 3 are each the lowest score of their row: last of four.
    assert partial_score("top_k", scores, i64([0, 3]), k=3) == (0.0, 2)
    assert partial_score("top_k", scores, i64([0, 3]), k=4) == (2.0, 2)


def test_top_k_breaks_ties_as_accuracy_does():
    scores = f32([[0.5, 0.5, 0.1]])
    assert partial_score("top_k", scores, i64([0]), k=1) == (1.0, 1)
    assert partial_score("top_k", scores, i64([1]), k=1) == (0.0, 1)
    assert partial_score("top_k", scores, i64([1]), k=2) == (1.0, 1)
    # With many ties, top-1 and accuracy agree sample by sample.
    rng = np.random.default_rng(7)
    many = rng.integers(0, 3, size=(500, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=500)
    assert partial_score("top_k", many, labels, k=1) == partial_score("accuracy", many, labels)
    assert partial_score("top_k", many, labels, k=6) == (500.0, 500)


def test_mean_absolute_error_averages_each_sample_then_the_samples():
    outputs = f32([[1, 2], [3, 5]])
    expected = f32([[1, 1], [0, 5]])
    # Per sample 0.5 and 1.5.
    assert partial_score("mean_absolute_error", outputs, expected) == (2.0, 2)
    assert partial_score("mean_absolute_error", f32([1.5, -2]), f32([1, 2])) == (4.5, 2)


def test_mean_absolute_error_does_not_wrap_unsigned_integers():
    low, high = np.array([0], dtype=np.uint8), np.array([255], dtype=np.uint8)
    assert partial_score("mean_absolute_error", low, high) == (255.0, 1)


def test_iou_of_boxes_worked_out_by_hand():
    square = [0, 0, 2, 2]
    shifted = [1, 1, 3, 3]  # overlaps the square in 1; union 4 + 4 - 1 = 7
    far = [5, 5, 6, 6]
    total, count = partial_score("iou", f32([square, square, square]), f32([square, shifted, far]))
    assert count == 3 and total == pytest.approx(1 + 1 / 7 + 0, abs=1e-12)
    # [N, B, 4]: each sample is the mean over its boxes.
    total, count = partial_score(
        "iou", f32([[square, square], [far, shifted]]), f32([[square, shifted], [far, far]])
    )
    assert count == 2 and total == pytest.approx((1 + 1 / 7) / 2 + (1 + 0) / 2, abs=1e-12)


def test_iou_scores_degenerate_boxes_zero_and_never_nan():
    flat = [0, 0, 0, 2]  # no width
    reversed_corners = [2, 2, 0, 0]
    point = [1, 1, 1, 1]
    outputs = f32([flat, reversed_corners, point, [0, 0, 2, 2]])
    expected = f32([flat, reversed_corners, point, point])
    total, count = partial_score("iou", outputs, expected)
    assert (total, count) == (0.0, 4)
    integers = i64([[0, 0, 4, 4]])
    assert partial_score("iou", integers, i64([[0, 0, 4, 2]])) == (0.5, 1)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_an_empty_chunk_scores_nothing(metric):
    shapes = {
        "accuracy": ((0, 3), (0,)),
        "top_k": ((0, 3), (0,)),
        "mean_absolute_error": ((0, 2), (0, 2)),
        "iou": ((0, 4), (0, 4)),
    }
    out_shape, exp_shape = shapes[metric]
    expected = np.zeros(exp_shape, dtype=np.int64 if len(exp_shape) == 1 else np.float32)
    assert partial_score(metric, np.zeros(out_shape, np.float32), expected, k=2) == (0.0, 0)


# --- chunks add up to the whole ----------------------------------------------------------------


def _random_set(metric: str, rng: np.random.Generator, samples: int):
    if metric in ("accuracy", "top_k"):
        # Coarse scores, so that ties occur.
        scores = rng.integers(0, 8, size=(samples, 10)).astype(np.float32)
        return scores, rng.integers(0, 10, size=samples)
    if metric == "mean_absolute_error":
        return rng.normal(size=(samples, 3, 5)), rng.normal(size=(samples, 3, 5))
    corners = rng.uniform(0, 10, size=(2, samples, 3, 2, 2))
    # Sorted corners make proper boxes; a few are then flattened to degenerate ones.
    boxes = np.sort(corners, axis=-2).reshape(2, samples, 3, 4)
    boxes[0, ::7, 0, 2] = boxes[0, ::7, 0, 0]
    return boxes[0].astype(np.float32), boxes[1].astype(np.float32)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_the_partials_of_chunks_add_up_to_the_score_of_the_whole_set(metric):
    rng = np.random.default_rng(2024)
    outputs, expected = _random_set(metric, rng, 1000)
    whole_sum, whole_count = partial_score(metric, outputs, expected, k=3)
    total, count = 0.0, 0
    bounds = [0, 1, 17, 17, 400, 999, 1000]  # uneven chunks, one empty, one of a single sample
    for start, stop in itertools.pairwise(bounds):
        part_sum, part_count = partial_score(metric, outputs[start:stop], expected[start:stop], k=3)
        total += part_sum
        count += part_count
    assert count == whole_count == 1000
    if metric in ("accuracy", "top_k"):
        assert total == whole_sum  # sums of 0 and 1: exact
        assert 0 < whole_sum < 1000
    else:
        assert total / count == pytest.approx(whole_sum / whole_count, rel=1e-12, abs=0)
    # And the whole is the mean of per-sample scores taken one at a time.
    singles = [
        partial_score(metric, outputs[i : i + 1], expected[i : i + 1], k=3)[0] for i in range(1000)
    ]
    assert whole_sum / whole_count == pytest.approx(sum(singles) / 1000, rel=1e-12, abs=0)


# --- refusals ----------------------------------------------------------------------------------

SCORES = f32([[0.1, 0.9, 0.0], [0.3, 0.3, 0.4]])
LABELS = i64([1, 2])
BOXES = f32([[0, 0, 1, 1], [0, 0, 2, 2]])

REFUSED = [
    ("unknown metric", "f1", SCORES, LABELS, 5, "unknown metric 'f1'"),
    ("accuracy scores rank 3", "accuracy", SCORES[:, :, None], LABELS, 5, "rank 3"),
    ("accuracy float labels", "accuracy", SCORES, f32([1, 2]), 5, "expected values as integers"),
    ("accuracy labels rank 2", "accuracy", SCORES, LABELS[:, None], 5, r"shaped \[N\]"),
    ("accuracy float outputs rank 1", "accuracy", f32([1, 2]), LABELS, 5, "output as integers"),
    ("accuracy bool scores", "accuracy", SCORES > 0.2, LABELS, 5, "as numbers, not bool"),
    ("accuracy no classes", "accuracy", np.zeros((2, 0), np.float32), LABELS, 5, "at least one"),
    ("accuracy NaN", "accuracy", f32([[np.nan, 1, 0], [0, 1, 0]]), LABELS, 5, "NaN"),
    ("accuracy label too big", "accuracy", SCORES, i64([1, 3]), 5, r"\[0, 3\)"),
    ("accuracy label negative", "accuracy", SCORES, i64([-1, 0]), 5, r"\[0, 3\)"),
    ("accuracy N mismatch", "accuracy", SCORES, i64([1, 2, 0]), 5, "2 samples .* hold 3"),
    ("object dtype", "accuracy", SCORES.astype(object), LABELS, 5, "element type"),
    ("top_k k = 0", "top_k", SCORES, LABELS, 0, "at least 1, not 0"),
    ("top_k k bool", "top_k", SCORES, LABELS, True, "not True"),
    ("top_k k over C", "top_k", SCORES, LABELS, 4, "k = 4 is more than the output's 3"),
    ("top_k labels as outputs", "top_k", LABELS, LABELS, 1, "rank 1"),
    ("top_k NaN", "top_k", f32([[np.nan, 1, 0], [0, 1, 0]]), LABELS, 2, "NaN"),
    ("top_k label out of range", "top_k", SCORES, i64([0, 9]), 2, r"\[0, 3\)"),
    ("top_k N mismatch", "top_k", SCORES, i64([0]), 2, "2 samples .* hold 1"),
    ("mae shapes differ", "mean_absolute_error", SCORES, SCORES[:, :2], 5, "one shape"),
    ("mae N mismatch", "mean_absolute_error", SCORES, SCORES[:1], 5, "one shape"),
    ("mae scalar", "mean_absolute_error", f32(1), f32(1), 5, r"shaped \[N, ...\]"),
    (
        "mae no values",
        "mean_absolute_error",
        f32(np.zeros((2, 0))),
        f32(np.zeros((2, 0))),
        5,
        "at least one value",
    ),
    ("mae NaN", "mean_absolute_error", f32([1, np.nan]), f32([1, 2]), 5, "NaN or infinite"),
    (
        "mae infinite expected",
        "mean_absolute_error",
        f32([1, 2]),
        f32([1, np.inf]),
        5,
        "expected values hold",
    ),
    ("mae bool", "mean_absolute_error", np.array([True]), np.array([False]), 5, "numbers"),
    ("mae overflow", "mean_absolute_error", np.array([1e308]), np.array([-1e308]), 5, "too large"),
    ("iou three coordinates", "iou", BOXES[:, :3], BOXES[:, :3], 5, "boxes of 4 coordinates"),
    ("iou rank 1", "iou", BOXES[0], BOXES[0], 5, "rank 1"),
    ("iou rank 4", "iou", BOXES[None, None], BOXES[None, None], 5, "rank 4"),
    (
        "iou no boxes",
        "iou",
        f32(np.zeros((2, 0, 4))),
        f32(np.zeros((2, 0, 4))),
        5,
        "at least one box",
    ),
    ("iou box counts differ", "iou", BOXES[:, None], BOXES[:, None].repeat(2, 1), 5, "one shape"),
    ("iou N mismatch", "iou", BOXES, BOXES[:1], 5, "one shape"),
    ("iou NaN", "iou", f32([[0, 0, np.nan, 1]]), f32([[0, 0, 1, 1]]), 5, "NaN or infinite"),
]


@pytest.mark.parametrize(
    ("metric", "outputs", "expected", "k", "message"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_inputs_that_do_not_fit_are_refused_with_a_reason(metric, outputs, expected, k, message):
    with pytest.raises(MetricInputError, match=message):
        partial_score(metric, outputs, expected, k=k)


def test_non_arrays_are_refused():
    with pytest.raises(MetricInputError, match="must be arrays"):
        partial_score("accuracy", [[0.1, 0.9]], i64([1]))  # type: ignore[arg-type]


# --- checked before anything runs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "output", "expected", "k"),
    [
        ("accuracy", (("batch", 1000), "float32"), (("batch",), "int64"), 5),
        ("accuracy", ((None,), "int32"), ((64,), "int64"), 5),
        ("accuracy", (None, "float16"), ((64,), "uint8"), 5),  # rank not declared
        ("top_k", ((-1, 1000), "float32"), ((64,), "int64"), 1000),
        ("top_k", (("N", "C"), np.dtype(np.float64)), (("N",), np.dtype(np.int64)), 50),
        ("mean_absolute_error", (("N", 3, 224), "float32"), ((8, 3, 224), "float64"), 5),
        ("iou", (("N", "B", 4), "float32"), ((8, 20, 4), "float32"), 5),
        ("iou", (("N", None), "int32"), ((8, 4), "float32"), 5),
    ],
)
def test_declared_shapes_with_open_dimensions_pass(metric, output, expected, k):
    check_metric_applies(metric, *output, *expected, k=k)


@pytest.mark.parametrize(
    ("metric", "output", "expected", "k", "message"),
    [
        ("accuracy", (("N", 10), "unknown"), (("N",), "int64"), 5, "element type"),
        ("accuracy", (("N", 10), "sequence_type"), (("N",), "int64"), 5, "element type"),
        ("accuracy", (("N", 10), "float32"), (("N",), "str"), 5, "element type"),
        ("accuracy", ((8, 10), "float32"), ((9,), "int64"), 5, "8 samples .* hold 9"),
        ("top_k", (("N", 10), "float32"), (("N",), "int64"), 11, "more than the output's 10"),
        ("top_k", (None, "float32"), (("N",), "int64"), -1, "at least 1"),
        ("mean_absolute_error", (("N", 3), "float32"), (("N", 4), "float32"), 5, "one shape"),
        ("iou", (("N", 5), "float32"), (("N", 5), "float32"), 5, "4 coordinates"),
        ("iou", ((8, 0, 4), "float32"), ((8, 0, 4), "float32"), 5, "at least one box"),
    ],
)
def test_declared_shapes_that_cannot_fit_are_refused(metric, output, expected, k, message):
    with pytest.raises(MetricInputError, match=message):
        check_metric_applies(metric, *output, *expected, k=k)
