"""Visual prompts: each marker draws pixels where expected, in its colour, blended by alpha."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llavakit import visual_prompts as vp

WHITE = Image.new("RGB", (64, 64), (255, 255, 255))


def _red(image):
    a = np.asarray(image).astype(int)
    return (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)  # (H, W)


def test_rectangle_draws_its_outline_only():
    out = _red(vp.rectangle(WHITE, (10, 10, 50, 40), width=2))
    assert out[10, 30] and out[11, 30] and out[40, 30] and out[25, 10] and out[25, 50]
    assert not out[25, 30] and not out[5, 5] and not out[12, 30]
    assert np.asarray(WHITE).min() == 255  # input untouched


def test_ellipse_triangle_point():
    e = _red(vp.ellipse(WHITE, (10, 10, 50, 50), width=2))
    assert e[10, 30] and e[30, 10] and not e[30, 30] and not e[11, 11]
    t = _red(vp.triangle(WHITE, (10, 10, 50, 50), width=2))
    assert t[49, 30] and t[11, 30] and not t[40, 30] and not t[12, 12]
    p = _red(vp.point(WHITE, (20, 30), radius=3))
    assert p[30, 20] and p[30, 22] and not p[30, 26] and p.sum() < 60


def test_arrow_scribble_and_mask_contour():
    a = _red(vp.arrow(WHITE, (5, 32), (55, 32), width=2))
    assert a[32, 10] and a[32, 54] and not a[10, 10]
    assert a[:, 45:55].sum(0).max() > a[:, 10:20].sum(0).max()  # the head is wider than the shaft
    s = _red(vp.scribble(WHITE, [(5, 5), (30, 30), (60, 5)], width=3))
    assert s[30, 30] and s[5, 5] and not s[50, 30]
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    c = _red(vp.mask_contour(WHITE, mask, width=2))
    assert c[20, 30] and c[21, 30] and c[39, 30] and not c[22, 30] and not c[30, 30] and not c[10, 10]
    with pytest.raises(ValueError, match="mask shape"):
        vp.mask_contour(WHITE, np.zeros((3, 3), bool))


def test_colour_width_and_alpha_blending():
    blue = np.asarray(vp.rectangle(WHITE, (10, 10, 50, 50), color="blue", width=1))
    assert tuple(blue[10, 30]) == (0, 0, 255)
    half = np.asarray(vp.rectangle(WHITE, (10, 10, 50, 50), color=(0, 0, 0), width=1, alpha=0.5))
    assert all(abs(int(v) - 128) <= 1 for v in half[10, 30])  # 50% black over white
    thick = _red(vp.rectangle(WHITE, (10, 10, 50, 50), width=5))
    assert thick[14, 30] and not thick[15, 30]
    with pytest.raises(ValueError, match="alpha"):
        vp.point(WHITE, (1, 1), alpha=2)
    with pytest.raises(ValueError, match="x1 < x0"):
        vp.rectangle(WHITE, (50, 10, 10, 40))
    with pytest.raises(ValueError, match="width"):
        vp.ellipse(WHITE, (1, 1, 5, 5), width=0)
    with pytest.raises(TypeError, match="PIL.Image"):
        vp.rectangle(np.zeros((4, 4, 3)), (0, 0, 1, 1))
