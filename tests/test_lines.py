"""The pure pieces of reading a line: cleaning the ink (`lines`), CTC decoding (`ctc`) checked
against brute force, and which ink is which label (`segment`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from digitnet.inference.ctc import BLANK, align, best_path, digit_posterior, log_softmax, string_log_prob
from digitnet.inference.lines import clean_ink, find_line, whole_strokes


def test_clean_ink_drops_a_ruled_line_and_dots_but_keeps_the_strokes_it_crosses():
    page = np.zeros((60, 200), bool)
    page[10:40, 30:34] = True  # a "1"
    page[10:40, 80:84] = True  # another
    page[38:40, 5:195] = True  # an underline through both
    page[5, 150] = True  # a speck
    out = clean_ink(page)
    assert out[10:38, 30:34].all() and out[10:38, 80:84].all()  # the strokes stay …
    assert out[38:40, 30:34].all()  # … where the line crosses them too
    assert not out[38:40, 40:75].any() and not out[38:40, 100:190].any() and not out[5, 150]


def test_clean_ink_works_in_the_inks_box_with_the_pages_measures():
    """The same answer wherever the ink sits on the page, and a line as long as the page is wide is
    all the writing there is (never removed)."""
    ink = np.zeros((10, 15), bool)
    ink[:, 0] = ink[:, 14] = True
    ink[5] = True
    assert clean_ink(ink)[5].all()  # run = 15 = the page's width: kept
    page = np.zeros((40, 15), bool)
    page[20:30] = ink
    assert np.array_equal(clean_ink(page)[20:30], clean_ink(ink)) and not clean_ink(page)[:20].any()


def test_whole_strokes_grows_sure_ink_along_faint_strokes_only():
    image = np.zeros((20, 40), np.float32)
    image[5:15, 5] = 1.0  # sure ink
    image[5:15, 6:12] = 0.4  # a faint part of the same stroke
    image[5:15, 30] = 0.4  # faint ink on its own: grain
    grown = whole_strokes(image, image > 0.9)
    assert grown[5:15, 5:12].all() and not grown[:, 30].any()
    assert not whole_strokes(np.zeros((5, 5), np.float32), np.zeros((5, 5), bool)).any()


def test_find_line_keeps_a_faint_stroke_that_touches_the_writing():
    """A stroke drawn lighter than the rest (a 7's bar, a 9's loop: MNIST's writers do it) reaches
    the reader; at about a quarter of the dark stroke's contrast it was cut at the old 0.3
    threshold and the digit read as another. Ink as faint that touches no writing stays out."""
    rng = np.random.default_rng(0)
    page = 220.0 + rng.normal(0.0, 2.0, (120, 160))  # paper with grain, dark ink on it
    page[20:100, 40:48] = 40.0  # a dark stroke
    page[30:36, 48:100] = 170.0  # a faint one from it, 50 levels under the paper (180 for the dark)
    page[70:76, 120:150] = 170.0  # as faint, touching nothing
    line = find_line(np.clip(page, 0, 255).astype(np.uint8))
    assert line is not None
    cols = np.flatnonzero(line.strip.max(axis=0) > 0.1)
    span = (cols[-1] + 1 - cols[0]) / line.geom.scale  # in input pixels
    assert 55 <= span <= 65  # the dark stroke and the faint one (60 px), not the faint one alone


def brute_force(log_probs: np.ndarray, labels: list[int]) -> float:
    """log p(labels) by summing every frame path that collapses to them (small T only)."""
    total = -np.inf
    t_max, c = log_probs.shape
    for path in itertools.product(range(c), repeat=t_max):
        collapsed = [k for i, k in enumerate(path) if k != BLANK and (i == 0 or k != path[i - 1])]
        if collapsed == [k + 1 for k in labels]:
            total = np.logaddexp(total, sum(log_probs[t, k] for t, k in enumerate(path)))
    return float(total)


@pytest.mark.parametrize("labels", [[], [3], [3, 3], [1, 3], [2, 2, 2]])
def test_string_log_prob_is_the_sum_over_every_alignment(labels):
    rng = np.random.default_rng(len(labels))
    lp = log_softmax(rng.normal(size=(6, 5)), axis=1)  # 6 frames, blank + 4 classes (labels 0-3)
    assert string_log_prob(lp, labels) == pytest.approx(brute_force(lp, labels), abs=1e-9)


@pytest.mark.parametrize("labels", [[3], [3, 3], [1, 3], [2, 1, 2]])
def test_align_gives_the_frames_of_the_most_probable_path_to_a_string(labels):
    rng = np.random.default_rng(10 + len(labels))
    lp = log_softmax(rng.normal(size=(6, 5)), axis=1)
    best, best_path_ = -np.inf, ()
    for path in itertools.product(range(5), repeat=6):  # every frame path that collapses to labels
        collapsed = [k for i, k in enumerate(path) if k != BLANK and (i == 0 or k != path[i - 1])]
        score = sum(lp[t, k] for t, k in enumerate(path))
        if collapsed == [k + 1 for k in labels] and score > best:
            best, best_path_ = score, path
    starts = [t for t, k in enumerate(best_path_) if k != BLANK and (t == 0 or k != best_path_[t - 1])]
    ends = [t for t, k in enumerate(best_path_) if k != BLANK and (t == 5 or k != best_path_[t + 1])]
    assert align(lp, labels) == list(zip(starts, ends, strict=True))
    assert align(lp[:4], [2, 2, 2]) is None  # three equal labels need five frames
    assert align(lp, []) == [] and align(lp[:1], [1, 3]) is None


def test_best_path_collapses_repeats_and_needs_a_blank_between_equal_labels():
    frames = [0, 4, 4, 0, 4, 2, 2, 0]  # blank 3 3 blank 3 1 1 blank
    lp = np.log(np.full((len(frames), 12), 0.01))
    lp[np.arange(len(frames)), frames] = np.log(0.89)
    labels, spans = best_path(lp)
    assert labels == [3, 3, 1] and spans == [(1, 2), (4, 4), (5, 6)]


def test_digit_posterior_is_the_readers_belief_over_ten_digits_where_the_label_peaks():
    lp = np.log(np.full((3, 12), 0.01))
    lp[0, 4] = np.log(0.5)  # frame 0: digit 3 at 0.5
    lp[1, 4], lp[1, 6] = np.log(0.8), np.log(0.1)  # frame 1: digit 3 at 0.8, digit 5 at 0.1
    post = digit_posterior(lp, (0, 2), 3)
    assert post.shape == (10,) and post.sum() == pytest.approx(1.0)
    assert post.argmax() == 3 and post[3] / post[5] == pytest.approx(8.0)  # frame 1's odds
