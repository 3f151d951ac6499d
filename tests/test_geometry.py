import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.geometry import (
    Frame,
    box_area,
    box_iou,
    box_iou_tensor,
    box_is_valid,
    clip_box,
    cxcywh_to_xyxy,
    generalized_box_iou,
    generalized_box_iou_tensor,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

# Per-test settings (not a global profile) so this file never changes other files' hypothesis runs.
fast = settings(max_examples=60, deadline=None)

coord = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)
pos_size = st.floats(min_value=0.5, max_value=1000, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw, min_size=size):
    x, y, w, h = draw(coord), draw(coord), draw(min_size), draw(min_size)
    return (x, y, x + w, y + h)


def approx_box(a, b, tol=1e-6):
    return all(math.isclose(u, v, rel_tol=tol, abs_tol=tol) for u, v in zip(a, b, strict=True))


# ---- conversions -------------------------------------------------------------------------------------


@fast
@given(boxes())
def test_conversion_round_trips(b):
    assert approx_box(xywh_to_xyxy(xyxy_to_xywh(b)), b)
    assert approx_box(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)


def test_conversion_examples():
    assert xywh_to_xyxy([10, 20, 30, 40]) == (10.0, 20.0, 40.0, 60.0)
    assert xyxy_to_cxcywh((0, 0, 4, 2)) == (2.0, 1.0, 4.0, 2.0)
    assert cxcywh_to_xyxy((2, 1, 4, 2)) == (0.0, 0.0, 4.0, 2.0)
    with pytest.raises(ValueError, match="4 numbers"):
        xywh_to_xyxy([1, 2, 3])


def test_validity_and_clip():
    assert box_is_valid((0, 0, 0, 0))
    assert box_is_valid([1, 2, 3, 4])
    assert not box_is_valid((3, 0, 1, 1))
    assert not box_is_valid((0, 0, math.nan, 1))
    assert not box_is_valid((0, 0, math.inf, 1))
    assert not box_is_valid((0, 0, 1))
    assert not box_is_valid(None)
    assert clip_box((-5, 10, 500, 320), 400, 300) == (0.0, 10.0, 400.0, 300.0)


# ---- scalar IoU / GIoU -------------------------------------------------------------------------------


@fast
@given(boxes(), boxes())
def test_iou_symmetric_and_bounded(a, b):
    for plus_one in (False, True):
        v = box_iou(a, b, plus_one=plus_one)
        assert 0.0 <= v <= 1.0
        assert v == box_iou(b, a, plus_one=plus_one)


@fast
@given(boxes(min_size=pos_size))
def test_iou_self_is_one(a):
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, a, plus_one=True) == pytest.approx(1.0)
    assert generalized_box_iou(a, a) == pytest.approx(1.0)


def test_iou_hand_computed():
    a, b = (0, 0, 10, 10), (5, 5, 15, 15)
    assert box_iou(a, b) == pytest.approx(25 / 175)
    # +1 pixel: each box is 11x11 = 121 px, the overlap 6x6 = 36 px.
    assert box_iou(a, b, plus_one=True) == pytest.approx(36 / (121 + 121 - 36))
    assert box_area(a) == 100 and box_area(a, plus_one=True) == 121
    # Touching edges share a pixel row under +1 but nothing in the continuous convention.
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10), plus_one=True) == pytest.approx(11 / (121 + 121 - 11))


def test_iou_degenerate_never_raises():
    assert box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0
    assert box_iou((0, 0, 0, 0), (5, 5, 5, 5)) == 0.0
    assert box_iou((5, 5, 0, 0), (5, 5, 0, 0)) == 0.0  # inverted
    assert box_iou((0, 0, math.nan, 1), (0, 0, 1, 1)) == 0.0
    assert generalized_box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0
    assert generalized_box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    # Two distinct points: IoU 0, and the whole hull is "wasted", so GIoU -1 (matches the tensor version).
    assert generalized_box_iou((0, 0, 0, 0), (0, 1, 1, 1)) == -1.0
    # A point box under +1 is one pixel, so it matches itself.
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3), plus_one=True) == 1.0


@fast
@given(boxes(), boxes())
def test_giou_bounds_and_le_iou(a, b):
    g, i = generalized_box_iou(a, b), box_iou(a, b)
    assert -1.0 <= g <= 1.0
    assert g <= i + 1e-12


@fast
@given(boxes(min_size=pos_size), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_giou_equals_iou_when_nested(outer, f1, f2, f3, f4):
    # Build a box inside `outer`: the hull is then `outer` itself, so the GIoU penalty vanishes.
    x1, y1, x2, y2 = outer
    w, h = x2 - x1, y2 - y1
    ix1, ix2 = sorted((x1 + f1 * w, x1 + f2 * w))
    iy1, iy2 = sorted((y1 + f3 * h, y1 + f4 * h))
    inner = (ix1, iy1, ix2, iy2)
    assert generalized_box_iou(outer, inner) == pytest.approx(box_iou(outer, inner), abs=1e-9)


def test_giou_hand_computed():
    # Disjoint 1x1 boxes, hull 3x1: GIoU = 0 - (3 - 2) / 3.
    assert generalized_box_iou((0, 0, 1, 1), (2, 0, 3, 1)) == pytest.approx(-1 / 3)
    # Far apart: tends to -1.
    assert generalized_box_iou((0, 0, 1, 1), (1e6, 1e6, 1e6 + 1, 1e6 + 1)) == pytest.approx(-1.0, abs=1e-6)


# ---- tensor IoU / GIoU -------------------------------------------------------------------------------


# Half-pixel grid: keeps zero-size boxes and touching edges likely, but avoids hulls of ~1e-60 where
# the tensor eps (deliberately) dominates and the two versions are expected to differ.
half = st.integers(0, 2000).map(lambda v: v / 2)
grid_boxes = st.tuples(half, half, half, half).map(lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@fast
@given(st.lists(st.tuples(grid_boxes, grid_boxes), min_size=1, max_size=8))
def test_tensor_versions_agree_with_scalar(pairs):
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    iou = box_iou_tensor(a, b)
    giou = generalized_box_iou_tensor(a, b)
    assert iou.shape == giou.shape == (len(pairs),)
    for k, (pa, pb) in enumerate(pairs):
        # eps only matters for (near) zero-area unions, where both report ~0.
        assert iou[k].item() == pytest.approx(box_iou(pa, pb), abs=1e-4)
        assert giou[k].item() == pytest.approx(generalized_box_iou(pa, pb), abs=1e-4)


def test_tensor_shape_checked():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_iou_tensor(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        generalized_box_iou_tensor(torch.zeros(4), torch.zeros(4))


def test_giou_gradient_finite_for_identical_and_degenerate():
    pred = torch.tensor(
        [
            [0.1, 0.2, 0.5, 0.6],  # identical to target
            [0.3, 0.3, 0.3, 0.3],  # a point
            [0.3, 0.3, 0.3, 0.3],  # a point identical to a point
            [0.6, 0.6, 0.2, 0.2],  # inverted
            [0.0, 0.0, 0.0, 0.5],  # zero width
        ],
        requires_grad=True,
    )
    target = torch.tensor(
        [
            [0.1, 0.2, 0.5, 0.6],
            [0.1, 0.1, 0.4, 0.4],
            [0.3, 0.3, 0.3, 0.3],
            [0.1, 0.1, 0.4, 0.4],
            [0.0, 0.0, 0.0, 0.5],
        ]
    )
    giou = generalized_box_iou_tensor(pred, target)
    assert torch.isfinite(giou).all()
    assert giou[0].item() == pytest.approx(1.0, abs=1e-5)
    (1 - giou).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    # Identical boxes sit at the optimum.
    assert pred.grad[0].abs().max() < 1e-4


# ---- frames ------------------------------------------------------------------------------------------


def test_frame_validation():
    with pytest.raises(ValueError, match="width.*0"):
        Frame(0, 10, "pad")
    with pytest.raises(ValueError, match="height.*-3"):
        Frame(10, -3, "resize")
    with pytest.raises(ValueError, match="mode"):
        Frame(10, 10, "crop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        Frame(10.5, 10, "pad")  # type: ignore[arg-type]


def test_frame_pad_400x300_hand_checked():
    f = Frame(400, 300, "pad")
    assert f.side == 400 and f.offset == (0, 50) and f.scale == (400, 400)
    # The whole image occupies the centred band y in [50, 350] of a 400 square.
    assert f.normalize((0, 0, 400, 300)) == pytest.approx((0.0, 0.125, 1.0, 0.875))
    assert f.normalize((100, 0, 200, 150)) == pytest.approx((0.25, 0.125, 0.5, 0.5))
    assert f.denormalize((0.0, 0.0, 1.0, 1.0)) == (0.0, 0.0, 400.0, 300.0)  # padding clipped away
    assert f.denormalize_point((0.5, 0.05)) == (200.0, 0.0)  # a click on the top band
    tall = Frame(300, 400, "pad")
    assert tall.offset == (50, 0)
    assert tall.normalize((0, 0, 300, 400)) == pytest.approx((0.125, 0.0, 0.875, 1.0))
    # Odd padding floors like expand2square: (401 - 300) // 2 == 50.
    assert Frame(401, 300, "pad").offset == (0, 50)


def test_frame_resize_hand_checked():
    f = Frame(400, 300, "resize")
    assert f.offset == (0, 0) and f.scale == (400, 300)
    assert f.normalize((0, 0, 400, 300)) == (0.0, 0.0, 1.0, 1.0)
    assert f.normalize((100, 75, 200, 150)) == (0.25, 0.25, 0.5, 0.5)
    assert f.normalize_point((200, 150)) == (0.5, 0.5)


@fast
@given(
    st.integers(1, 2000),
    st.integers(1, 2000),
    st.sampled_from(["resize", "pad"]),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_frame_round_trip(w, h, mode, f1, f2, f3, f4):
    frame = Frame(w, h, mode)
    x1, x2 = sorted((f1 * w, f2 * w))
    y1, y2 = sorted((f3 * h, f4 * h))
    box = (x1, y1, x2, y2)
    norm = frame.normalize(box)
    assert all(-1e-9 <= v <= 1 + 1e-9 for v in norm)
    assert approx_box(frame.denormalize(norm), box, tol=1e-6)
    px = frame.denormalize_point(frame.normalize_point((x1, y2)))
    assert px == pytest.approx((x1, y2), abs=1e-6)
