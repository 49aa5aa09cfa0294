"""Evaluation metrics, scored chunk by chunk.

Every metric is the mean of a per-sample score, so a job scores each chunk with
:func:`partial_score`, adds up the ``(score_sum, count)`` pairs and divides at the end. That is
the figure scoring the whole set at once gives: exactly for ``accuracy`` and ``top_k`` (whose
per-sample scores are 0 or 1, so their sums are small whole numbers), and up to the rounding of
a float64 sum for the others.

What each metric takes (``N`` samples; :func:`check_metric_applies` checks it from the declared
shapes and dtypes before a job runs, :func:`partial_score` again on the arrays with their values):

* ``accuracy`` — outputs ``[N, C]`` class scores, the prediction being the highest score (ties
  go to the lower class, as ``argmax`` breaks them), against expected ``[N]`` integer labels in
  ``[0, C)``; or outputs ``[N]`` integer labels compared with the expected ones directly.
* ``top_k`` — outputs ``[N, C]`` scores; a hit when the label is among the ``k`` highest, ties
  broken as ``accuracy`` breaks them, so ``top_k`` with ``k = 1`` is ``accuracy``.
* ``mean_absolute_error`` — outputs and expected of one shape ``[N, ...]``; per sample the mean
  of ``|output - expected|`` over its values.
* ``iou`` — boxes ``[N, 4]`` or ``[N, B, 4]`` as ``(x1, y1, x2, y2)``, output box ``i`` against
  expected box ``i``; per sample the mean intersection over union of its ``B`` boxes. A box with
  ``x2 <= x1`` or ``y2 <= y1`` is degenerate and scores 0, so the score is never NaN.

Scores may be infinite (a log-probability of ``-inf`` ranks last) but never NaN; values that are
averaged or measured (the last two metrics) must be finite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sandbox.protocol import DTYPE_NAMES

METRIC_NAMES = ("accuracy", "top_k", "mean_absolute_error", "iou")

Shape = Sequence[int | str | None] | None  # None: the rank itself is not declared


class MetricInputError(ValueError):
    """The outputs or expected values do not fit the metric; the message is safe to show."""


@dataclass(frozen=True)
class _Declared:
    """One side of a metric (the output or the expected values): its shape and element type."""

    what: str
    shape: tuple[int | None, ...] | None  # None for a dimension whose size is not fixed
    dtype: np.dtype[Any]

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def dim(self, axis: int) -> int | None:
        return None if self.shape is None else self.shape[axis]

    def require_integer(self, metric: str) -> None:
        if self.dtype.kind not in "iu":
            raise MetricInputError(f"{metric} needs {self.what} as integers, not {self.dtype.name}")

    def require_number(self, metric: str) -> None:
        if self.dtype.kind not in "iuf":
            raise MetricInputError(f"{metric} needs {self.what} as numbers, not {self.dtype.name}")

    def require_rank(self, metric: str, ranks: tuple[int, ...], layout: str) -> None:
        if self.rank is not None and self.rank not in ranks:
            raise MetricInputError(
                f"{metric} needs {self.what} shaped {layout}, not of rank {self.rank}"
            )


def _declared(what: str, shape: Shape, dtype: str | np.dtype[Any]) -> _Declared:
    try:
        element = np.dtype(dtype)
    except (TypeError, ValueError):
        element = None
    if element is None or element.name not in DTYPE_NAMES:
        raise MetricInputError(f"{what} have an element type no metric reads: {dtype}")
    if shape is None:
        return _Declared(what, None, element)
    dims = tuple(
        d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in shape
    )
    return _Declared(what, dims, element)


def _same_samples(metric: str, output: _Declared, expected: _Declared) -> None:
    """The first dimension (the samples) agrees where both sides fix it."""
    n_out, n_exp = output.dim(0), expected.dim(0)
    if n_out is not None and n_exp is not None and n_out != n_exp:
        raise MetricInputError(
            f"{metric}: the output holds {n_out} samples but the expected values hold {n_exp}"
        )


def _same_shape(metric: str, output: _Declared, expected: _Declared) -> None:
    """Both sides have one rank and agree on every dimension both fix."""
    if output.shape is None or expected.shape is None:
        return
    if len(output.shape) != len(expected.shape) or any(
        a is not None and b is not None and a != b
        for a, b in zip(output.shape, expected.shape, strict=True)
    ):
        shown = ["?" if d is None else d for d in output.shape]
        wanted = ["?" if d is None else d for d in expected.shape]
        raise MetricInputError(
            f"{metric} needs the output and the expected values in one shape, not {shown} "
            f"and {wanted}"
        )


def _check_accuracy(output: _Declared, expected: _Declared, k: int) -> None:
    expected.require_rank("accuracy", (1,), "[N] (class labels)")
    expected.require_integer("accuracy")
    output.require_rank("accuracy", (1, 2), "[N, C] (class scores) or [N] (class labels)")
    if output.rank == 1:
        output.require_integer("accuracy")
    else:
        output.require_number("accuracy")
        if output.dim(1) == 0:
            raise MetricInputError("accuracy needs at least one class score per sample")
    _same_samples("accuracy", output, expected)


def _check_top_k(output: _Declared, expected: _Declared, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MetricInputError(f"top_k needs k as a whole number of at least 1, not {k!r}")
    expected.require_rank("top_k", (1,), "[N] (class labels)")
    expected.require_integer("top_k")
    output.require_rank("top_k", (2,), "[N, C] (class scores)")
    output.require_number("top_k")
    classes = output.dim(1)
    if classes is not None and k > classes:
        raise MetricInputError(f"top_k: k = {k} is more than the output's {classes} classes")
    _same_samples("top_k", output, expected)


def _check_mean_absolute_error(output: _Declared, expected: _Declared, k: int) -> None:
    for side in (output, expected):
        side.require_number("mean_absolute_error")
        if side.rank == 0:
            raise MetricInputError(f"mean_absolute_error needs {side.what} shaped [N, ...]")
    _same_shape("mean_absolute_error", output, expected)
    if any(d == 0 for side in (output, expected) for d in (side.shape or ())[1:]):
        raise MetricInputError("mean_absolute_error needs at least one value per sample")


def _check_iou(output: _Declared, expected: _Declared, k: int) -> None:
    for side in (output, expected):
        side.require_number("iou")
        side.require_rank("iou", (2, 3), "[N, 4] or [N, B, 4] (x1, y1, x2, y2)")
        if side.rank is not None and side.dim(side.rank - 1) not in (4, None):
            raise MetricInputError(f"iou needs {side.what} as boxes of 4 coordinates")
        if side.rank == 3 and side.dim(1) == 0:
            raise MetricInputError("iou needs at least one box per sample")
    _same_shape("iou", output, expected)


_CHECKS: dict[str, Callable[[_Declared, _Declared, int], None]] = {
    "accuracy": _check_accuracy,
    "top_k": _check_top_k,
    "mean_absolute_error": _check_mean_absolute_error,
    "iou": _check_iou,
}


def check_metric_applies(
    metric: str,
    output_shape: Shape,
    output_dtype: str | np.dtype[Any],
    expected_shape: Shape,
    expected_dtype: str | np.dtype[Any],
    *,
    k: int = 5,
) -> None:
    """Raise MetricInputError unless ``metric`` can score outputs and expected values so declared.

    A dimension given as ``None``, a string (a symbolic dimension) or a negative number is not
    fixed, and passes; a ``None`` shape leaves the rank open. ``k`` is read by ``top_k`` only.
    """
    check = _CHECKS.get(metric)
    if check is None:
        raise MetricInputError(f"unknown metric {metric!r}; one of {', '.join(METRIC_NAMES)}")
    check(
        _declared("the output", output_shape, output_dtype),
        _declared("the expected values", expected_shape, expected_dtype),
        k,
    )


def _labels_in_range(metric: str, labels: np.ndarray, classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise MetricInputError(
            f"{metric}: the expected labels must lie in [0, {classes}) for the output's "
            f"{classes} classes"
        )


def _no_nan(what: str, values: np.ndarray) -> None:
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise MetricInputError(f"{what} hold NaN")


def _all_finite(what: str, values: np.ndarray) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise MetricInputError(f"{what} hold NaN or infinite values")


def _accuracy(outputs: np.ndarray, expected: np.ndarray, k: int) -> np.ndarray:
    if outputs.ndim == 1:
        return outputs == expected
    _no_nan("the output", outputs)
    _labels_in_range("accuracy", expected, outputs.shape[1])
    return outputs.argmax(axis=1) == expected


def _top_k(outputs: np.ndarray, expected: np.ndarray, k: int) -> np.ndarray:
    _no_nan("the output", outputs)
    samples, classes = outputs.shape
    _labels_in_range("top_k", expected, classes)
    label = expected.astype(np.int64)
    label_score = outputs[np.arange(samples), label][:, None]
    # The label's place in a descending order that puts the lower class first among equals.
    higher = (outputs > label_score).sum(axis=1)
    tied_before = ((outputs == label_score) & (np.arange(classes) < label[:, None])).sum(axis=1)
    return higher + tied_before < k


def _mean_absolute_error(outputs: np.ndarray, expected: np.ndarray, k: int) -> np.ndarray:
    _all_finite("the output", outputs)
    _all_finite("the expected values", expected)
    # In float64, so unsigned integers do not wrap around when subtracted.
    difference = np.abs(outputs.astype(np.float64) - expected.astype(np.float64))
    return difference.reshape(len(outputs), -1).mean(axis=1)


def _iou(outputs: np.ndarray, expected: np.ndarray, k: int) -> np.ndarray:
    _all_finite("the output", outputs)
    _all_finite("the expected values", expected)
    a = outputs.astype(np.float64).reshape(len(outputs), -1, 4)
    b = expected.astype(np.float64).reshape(len(expected), -1, 4)
    ax1, ay1, ax2, ay2 = np.moveaxis(a, -1, 0)
    bx1, by1, bx2, by2 = np.moveaxis(b, -1, 0)
    valid = (ax2 > ax1) & (ay2 > ay1) & (bx2 > bx1) & (by2 > by1)
    width = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0, None)
    height = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0, None)
    intersection = width * height
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - intersection
    ratio = np.zeros_like(intersection)
    np.divide(intersection, union, out=ratio, where=valid & (union > 0))
    return ratio.mean(axis=1)


_SCORES: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "accuracy": _accuracy,
    "top_k": _top_k,
    "mean_absolute_error": _mean_absolute_error,
    "iou": _iou,
}


def partial_score(
    metric: str, outputs: np.ndarray, expected: np.ndarray, *, k: int = 5
) -> tuple[float, int]:
    """``(sum of per-sample scores, samples)`` of one chunk; the metric is total sum / total count."""
    if not isinstance(outputs, np.ndarray) or not isinstance(expected, np.ndarray):
        raise MetricInputError("the output and the expected values must be arrays")
    check_metric_applies(metric, outputs.shape, outputs.dtype, expected.shape, expected.dtype, k=k)
    samples = len(outputs)
    if samples == 0:
        return 0.0, 0
    # Finite inputs can still overflow float64 (coordinates near 1e308); that is refused below.
    with np.errstate(over="ignore", invalid="ignore"):
        scores = _SCORES[metric](outputs, expected, k)
        total = float(scores.sum(dtype=np.float64))
    if not np.isfinite(total):
        raise MetricInputError(f"{metric}: the values are too large to score")
    return total, samples
