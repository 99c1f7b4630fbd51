"""Which ink of a read line belongs to which label: CTC's frames say *which* digits a line holds,
not exactly *where*; the ink's pieces (connected strokes, in order) say where. Boxes come back in
the input image's pixels, with each label's own ink (what it looked like).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from digitnet.inference.lines import Box, Line


def pieces(strip: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """The strip's ink as pieces left to right: (component labels (32, W), the component ids of
    each piece). A piece is a connected stroke, with strokes that sit one above the other (a 5's
    detached bar, the parts of a 4) merged into one."""
    components, _n = ndimage.label(strip > 0.1, structure=np.ones((3, 3), bool))
    spans = [(f[1].start, f[1].stop, k) for k, f in enumerate(ndimage.find_objects(components), 1) if f]
    units: list[tuple[int, int, list[int]]] = []
    for x0, x1, k in sorted(spans):
        if units:
            u0, u1, ks = units[-1]
            if min(x1, u1) - max(x0, u0) > 0.5 * min(x1 - x0, u1 - u0):  # mostly above/below the last
                units[-1] = (u0, max(u1, x1), [*ks, k])
                continue
        units.append((x0, x1, [k]))
    return components, [ks for _, _, ks in units]


def label_masks(strip: np.ndarray, n_labels: int) -> tuple[list[np.ndarray], bool]:
    """Which ink of the strip belongs to which of `n_labels` labels (left to right): one bool mask
    (32, W) each, and whether pieces and labels matched one to one (each label a whole piece of
    ink, none cut from a wider one or joined from several: the digits stand apart).

    The labels follow the ink's pieces in order: with one piece per label, each takes its own;
    digits that touch make fewer pieces than labels, so a wide piece is cut into as many digits as
    its width holds; a digit in several pieces makes more, so the narrowest pieces join their
    nearest neighbour. (CTC's frames say *which* digits, not exactly *where*.)

    Pieces are merged as column profiles (W,), each width kept up to date, and masks are built only
    for the pieces left: a page of hundreds of hairlines costs a few ms, not seconds."""
    if n_labels == 0:
        return [], False
    components, units = pieces(strip)
    if not units:
        return [np.zeros(strip.shape, bool) for _ in range(n_labels)], False
    by_id = np.zeros(int(components.max()) + 1, np.int64)  # component id → its piece
    for u, ks in enumerate(units):
        by_id[ks] = u
    piece = np.where(components > 0, by_id[components], -1)  # (32, W): which piece, -1 for paper
    occupied = np.zeros((len(units), strip.shape[1]), bool)  # (pieces, W): each piece's ink columns
    r, c = np.nonzero(piece >= 0)
    occupied[piece[r, c], c] = True
    cols = list(occupied)
    members = [[u] for u in range(len(units))]
    widths = [int(c.sum()) for c in cols]
    while len(cols) > n_labels:  # a broken digit: merge the narrowest piece into its neighbour
        i = int(np.argmin(widths))
        j = i - 1 if i == len(cols) - 1 or (i > 0 and widths[i - 1] < widths[i + 1]) else i + 1
        a, b = min(i, j), max(i, j)
        cols[a] |= cols[b]
        members[a] += members[b]
        widths[a] = int(cols[a].sum())
        del cols[b], members[b], widths[b]
    spread = np.array(widths, float)
    shares = np.ones(len(cols), int)  # touching digits: wide pieces hold more than one
    for _ in range(n_labels - len(cols)):
        shares[int(np.argmax(spread / shares))] += 1
    masks = []
    for c, group, share in zip(cols, members, shares, strict=True):
        unit = np.isin(piece, group)
        x = np.flatnonzero(c)
        edges = np.linspace(x[0], x[-1] + 1, share + 1)
        for k in range(share):
            band = np.zeros(strip.shape[1], bool)
            band[round(edges[k]) : round(edges[k + 1])] = True
            masks.append(unit & band[None, :])
    return masks, len(units) == n_labels


def boxes(line: Line, spans: list[tuple[int, int]], stride: int) -> tuple[list[tuple[Box, np.ndarray]], bool]:
    """Each label's box in input pixels and its ink, cropped from the strip (what it looked like),
    and whether each label is one whole piece of ink (`label_masks`); `spans` are the labels'
    frames, `stride` strip columns per frame."""
    strip = line.strip
    masks, one_to_one = label_masks(strip, len(spans))
    # As many pieces as labels is not enough: each label's frames must also lie over its own piece
    # (a stray mark the reader ignored beside two touching digits also makes three pieces).
    one_to_one = one_to_one and all(_over(m, span, stride) for m, span in zip(masks, spans, strict=True))
    out = []
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:  # a label with no ink of its own: the columns of its frames
            a, b = spans[i]
            rows = np.arange(strip.shape[0])
            cols = np.arange(a * stride, (b + 1) * stride)
            mask = np.zeros_like(mask)
        r0, r1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        # its own ink, with one pixel around it for the anti-aliased edges; a neighbour's is left out
        # (the mask is empty outside its box, so dilating the box alone gives the same pixels)
        own = ndimage.binary_dilation(mask[r0:r1, x0:x1], np.ones((3, 3), bool))
        out.append((line.box(x0, r0, x1, r1), strip[r0:r1, x0:x1] * own))
    return out, one_to_one


def _over(mask: np.ndarray, span: tuple[int, int], stride: int) -> bool:
    """Whether the strip columns of frames `span` lie over `mask`'s ink, give or take two frames."""
    cols = np.flatnonzero(mask.any(axis=0))
    a, b = span[0] * stride, (span[1] + 1) * stride
    return bool(cols.size) and a < cols[-1] + 1 + 2 * stride and b > cols[0] - 2 * stride
