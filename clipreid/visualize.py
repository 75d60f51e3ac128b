"""Pictures of results drawn with Pillow alone: ranked retrieval lists and per-epoch training curves."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from clipreid.fileio import atomic_path

BORDER = 3  # coloured frame around every image tile
PAD = 4  # space between tiles and around the grid
CAPTION = 14  # caption strip under every tile
GAP = 12  # extra space between the query column and its ranked gallery images

QUERY_COLOUR = (40, 90, 220)
RIGHT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (210, 0, 0)
MISSING_COLOUR = (150, 150, 150)
TEXT_COLOUR = (20, 20, 20)
NO_TRUTH_COLOUR = (235, 150, 0)  # a ranked image whose identity is unknown
HEADER = 2 * CAPTION  # title and legend lines above the grid


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float()
    return np.asarray(x)


def _tile(path: Any, cell: tuple[int, int]) -> Image.Image:
    """The image letterboxed into ``cell`` (black padding), or a grey placeholder when it cannot be read."""
    canvas = Image.new("RGB", cell, (0, 0, 0))
    try:
        if path is None:
            raise FileNotFoundError
        with Image.open(path) as img:
            img = ImageOps.contain(img.convert("RGB"), cell)
    except (OSError, ValueError):  # missing or unreadable: a picture should not fail over one bad crop
        canvas.paste(MISSING_COLOUR, (0, 0, *cell))
        _centred_text(ImageDraw.Draw(canvas), "missing", (0, 0, *cell))
        return canvas
    canvas.paste(img, ((cell[0] - img.width) // 2, (cell[1] - img.height) // 2))
    return canvas


def _short_name(path: Any, limit: int = 11) -> str:
    """The file name of ``path``, shortened to ``limit`` characters to fit under a tile."""
    name = os.path.basename(str(path)) if path is not None else "?"
    return name if len(name) <= limit else name[:limit - 2] + ".."


def _centred_text(draw: ImageDraw.ImageDraw, text: str, box: tuple[int, int, int, int]) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = box[0] + (box[2] - box[0] - (right - left)) // 2 - left
    y = box[1] + (box[3] - box[1] - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=TEXT_COLOUR, font=font)


def save_ranked_lists(
    path: str | os.PathLike,
    query_paths: Sequence[Any],
    gallery_paths: Sequence[Any],
    distmat: Any,
    query_ids: Any,
    gallery_ids: Any,
    queries: Sequence[int] | None = None,
    topk: int = 10,
    num_queries: int = 8,
    seed: int = 0,
    cell: tuple[int, int] = (64, 128),
    title: str | None = None,
) -> list[int]:
    """Save a PNG grid of ranked lists and return the query indices shown.

    One row per query (``queries``, or ``num_queries`` sampled with ``seed``): the query (blue frame) then its
    ``topk`` nearest gallery images, green framed when the id matches and red when not, each captioned with
    its rank and distance. ``cell`` is the (width, height) every image is letterboxed into. Images that cannot
    be read become grey placeholders. The image is ``PAD + (topk + 1) * (cell_w + 2 * BORDER + PAD) + GAP``
    wide and ``PAD + rows * (cell_h + 2 * BORDER + CAPTION + PAD)`` high.

    Without ground truth (``query_ids`` and ``gallery_ids`` None) gallery images get a neutral frame and the
    query is captioned with its file name. A ``title``, and the no-truth mode, add a header (``HEADER`` high:
    the title and a legend of the colours) above the grid. Infinite distances (an image excluded from its own
    list) are not drawn.
    """
    d = _numpy(distmat)
    m, n = d.shape
    truth = query_ids is not None and gallery_ids is not None
    qids = _numpy(query_ids) if truth else np.zeros(m)
    gids = _numpy(gallery_ids) if truth else np.zeros(n)
    if (len(query_paths), len(gallery_paths), len(qids), len(gids)) != (m, n, m, n):
        raise ValueError(
            f"distmat is {m} x {n} but got {len(query_paths)} query paths, {len(gallery_paths)} gallery paths, "
            f"{len(qids)} query ids and {len(gids)} gallery ids"
        )
    if queries is None:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(m, size=min(num_queries, m), replace=False).tolist())
    else:
        chosen = [int(i) for i in queries]
        if any(not 0 <= i < m for i in chosen):
            raise ValueError(f"query indices must be in [0, {m}), got {chosen}")
    k = min(topk, n)
    cw, ch = cell
    pitch_x, pitch_y = cw + 2 * BORDER + PAD, ch + 2 * BORDER + CAPTION + PAD
    header = HEADER if title is not None or not truth else 0
    grid = Image.new("RGB", (PAD + (k + 1) * pitch_x + GAP, header + PAD + len(chosen) * pitch_y), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if header:
        font = ImageFont.load_default()
        legend = ("blue: query; green: same id; red: other id" if truth else
                  "blue: query; orange: its nearest images (no ground truth)") + "; captions: rank: distance"
        draw.text((PAD, PAD), title or "ranked lists", fill=TEXT_COLOUR, font=font)
        draw.text((PAD, PAD + CAPTION), legend, fill=TEXT_COLOUR, font=font)

    def put(col: int, row: int, image_path: Any, colour: tuple[int, int, int], caption: str) -> None:
        x = PAD + col * pitch_x + (GAP if col else 0)
        y = header + PAD + row * pitch_y
        draw.rectangle((x, y, x + cw + 2 * BORDER - 1, y + ch + 2 * BORDER - 1), fill=colour)
        grid.paste(_tile(image_path, cell), (x + BORDER, y + BORDER))
        top = y + ch + 2 * BORDER
        _centred_text(draw, caption, (x, top, x + cw + 2 * BORDER, top + CAPTION))

    for row, q in enumerate(chosen):
        put(0, row, query_paths[q], QUERY_COLOUR, f"query {qids[q]}" if truth else _short_name(query_paths[q]))
        for rank, g in enumerate(np.argsort(d[q], kind="stable")[:k], start=1):
            if not np.isfinite(d[q, g]):
                break
            colour = (RIGHT_COLOUR if gids[g] == qids[q] else WRONG_COLOUR) if truth else NO_TRUTH_COLOUR
            put(rank, row, gallery_paths[g], colour, f"{rank}: {d[q, g]:.3g}")
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return chosen


PANEL = (300, 180)  # one chart
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 12, 22, 24  # plot-area margins inside a panel: labels live there
_COLUMNS = 3


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _label(value: float) -> str:
    return f"{value:.4g}"


def _draw_chart(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str, xs: list, ys: list) -> None:
    """One line chart; ``ys`` holds None where a record lacks the value (the line breaks there)."""
    font = ImageFont.load_default()
    ox, oy = origin
    x0, y0 = ox + _LEFT, oy + _TOP
    x1, y1 = ox + PANEL[0] - _RIGHT, oy + PANEL[1] - _BOTTOM
    present = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    draw.text((x0, oy + 5), f"{title}   last {_label(present[-1][1])}", fill=TEXT_COLOUR, font=font)
    draw.line((x0, y0, x0, y1), fill=TEXT_COLOUR)
    draw.line((x0, y1, x1, y1), fill=TEXT_COLOUR)

    lo, hi = min(y for _, y in present), max(y for _, y in present)
    xlo, xhi = min(xs), max(xs)

    inset = 6  # keeps the extreme points off the axes

    def px(x: float) -> float:
        return (x0 + x1) / 2 if xhi == xlo else x0 + inset + (x - xlo) / (xhi - xlo) * (x1 - x0 - 2 * inset)

    def py(y: float) -> float:
        return (y0 + y1) / 2 if hi == lo else y1 - inset - (y - lo) / (hi - lo) * (y1 - y0 - 2 * inset)

    for value in {lo, hi}:
        text = _label(value)
        width = draw.textbbox((0, 0), text, font=font)[2]
        draw.text((x0 - 5 - width, py(value) - 6), text, fill=TEXT_COLOUR, font=font)
        draw.line((x0 - 3, py(value), x0, py(value)), fill=TEXT_COLOUR)
    for value in {xlo, xhi}:
        text = _label(value)
        width = draw.textbbox((0, 0), text, font=font)[2]
        draw.text((px(value) - width / 2, y1 + 5), text, fill=TEXT_COLOUR, font=font)
        draw.line((px(value), y1, px(value), y1 + 3), fill=TEXT_COLOUR)

    colour = QUERY_COLOUR
    points = list(zip(xs, ys, strict=True))
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        if ya is not None and yb is not None:
            draw.line((px(xa), py(ya), px(xb), py(yb)), fill=colour, width=2)
    for x, y in present:
        draw.ellipse((px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3), fill=colour)


def save_training_curves(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Save a PNG with one small line chart per numeric key of the per-epoch ``records``.

    The x axis is each record's ``epoch`` (its position, from 1, when absent). Keys may come and go between
    records; a missing or non-finite value breaks that line. Charts are ``PANEL`` sized, three per row.
    """
    xs_raw = [r["epoch"] if _is_number(r.get("epoch")) else i + 1 for i, r in enumerate(records)]
    order = sorted(range(len(records)), key=lambda i: xs_raw[i])
    xs = [float(xs_raw[i]) for i in order]
    keys: list[str] = []
    for r in records:
        keys += [k for k, v in r.items() if k != "epoch" and k not in keys and _is_number(v)]

    if not keys:
        image = Image.new("RGB", PANEL, (255, 255, 255))
        _centred_text(ImageDraw.Draw(image), "no numeric values to plot", (0, 0, *PANEL))
    else:
        cols = min(_COLUMNS, len(keys))
        rows = math.ceil(len(keys) / cols)
        image = Image.new("RGB", (cols * PANEL[0], rows * PANEL[1]), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for n, key in enumerate(keys):
            ys = [float(records[i][key]) if _is_number(records[i].get(key)) else None for i in order]
            _draw_chart(draw, ((n % cols) * PANEL[0], (n // cols) * PANEL[1]), key, xs, ys)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
