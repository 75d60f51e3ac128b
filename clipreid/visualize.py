"""Pictures of results drawn with Pillow alone: ranked retrieval lists and per-epoch training curves."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .fileio import atomic_path

RANKED_PNG = "ranked_lists.png"  # the picture evaluate.py and predict.py --query-dir write beside their results
BORDER = 3  # coloured frame around every image tile
PAD = 4  # space between tiles and around the grid
CAPTION = 14  # caption strip under every tile
GAP = 12  # extra space between the query column and its ranked gallery images
HEADER = 34  # title line and legend line above the ranked lists

QUERY_COLOUR = (40, 90, 220)
RIGHT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (210, 0, 0)
NO_TRUTH_COLOUR = (235, 150, 0)  # a ranked image whose identity is unknown
MISSING_COLOUR = (150, 150, 150)
TEXT_COLOUR = (20, 20, 20)


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


def _short_name(path: Any) -> str:
    """The file name of ``path``, shortened to 11 characters to fit under a tile."""
    name = os.path.basename(str(path)) if path is not None else "?"
    return name if len(name) <= 11 else name[:9] + ".."


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
    cell: tuple[int, int] = (64, 128),
    *,
    query_cams: Any = None,
    gallery_cams: Any = None,
    title: str = "",
) -> list[int]:
    """Save a PNG grid of ranked lists and return the query indices shown.

    One row per query (``queries``, or ``num_queries`` sampled with a fixed seed): the query (blue frame) then its
    ``topk`` nearest gallery images, green framed when the id matches and red when not, each captioned with
    its rank and distance. With ``query_cams`` and ``gallery_cams``, the gallery images of the query's id *and*
    camera are left out, as ``compute_scores`` ignores them. Without ground truth (``query_ids`` and ``gallery_ids``
    None: your own images) the ranked images get a neutral frame and the query its file name; infinite distances
    (an image excluded from its own list) are not drawn. ``title`` (say: model, re-ranking, split) and a
    colour legend head the picture. ``cell`` is the (width, height) every image is letterboxed into. Images
    that cannot be read become grey placeholders. The image is
    ``PAD + (topk + 1) * (cell_w + 2 * BORDER + PAD) + GAP`` wide and
    ``HEADER + PAD + rows * (cell_h + 2 * BORDER + CAPTION + PAD)`` high.
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
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("give both query_cams and gallery_cams, or neither")
    qcams = gcams = None
    if query_cams is not None:
        qcams, gcams = _numpy(query_cams), _numpy(gallery_cams)
        if (len(qcams), len(gcams)) != (m, n):
            raise ValueError(f"distmat is {m} x {n} but got {len(qcams)} query cams and {len(gcams)} gallery cams")
    if queries is None:
        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(m, size=min(num_queries, m), replace=False).tolist())
    else:
        chosen = [int(i) for i in queries]
        if any(not 0 <= i < m for i in chosen):
            raise ValueError(f"query indices must be in [0, {m}), got {chosen}")
    k = min(topk, n)
    cw, ch = cell
    pitch_x, pitch_y = cw + 2 * BORDER + PAD, ch + 2 * BORDER + CAPTION + PAD
    grid = Image.new("RGB", (PAD + (k + 1) * pitch_x + GAP, HEADER + PAD + len(chosen) * pitch_y), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    _header(draw, grid.width, title, same_camera_left_out=qcams is not None, truth=truth)

    def put(col: int, row: int, image_path: Any, colour: tuple[int, int, int], caption: str) -> None:
        x = PAD + col * pitch_x + (GAP if col else 0)
        y = HEADER + PAD + row * pitch_y
        draw.rectangle((x, y, x + cw + 2 * BORDER - 1, y + ch + 2 * BORDER - 1), fill=colour)
        grid.paste(_tile(image_path, cell), (x + BORDER, y + BORDER))
        top = y + ch + 2 * BORDER
        _centred_text(draw, caption, (x, top, x + cw + 2 * BORDER, top + CAPTION))

    for row, q in enumerate(chosen):
        put(0, row, query_paths[q], QUERY_COLOUR, f"query {qids[q]}" if truth else _short_name(query_paths[q]))
        order = np.argsort(d[q], kind="stable")
        if qcams is not None:  # the camera rule of the metrics: same id and same camera is no evidence
            order = order[~((gids[order] == qids[q]) & (gcams[order] == qcams[q]))]
        for rank, g in enumerate(order[:k], start=1):
            if not np.isfinite(d[q, g]):
                break
            colour = (RIGHT_COLOUR if gids[g] == qids[q] else WRONG_COLOUR) if truth else NO_TRUTH_COLOUR
            put(rank, row, gallery_paths[g], colour, f"{rank}: {d[q, g]:.3g}")
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return chosen


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
    """``text``, shortened with an ellipsis until it is at most ``width`` pixels wide."""
    font = ImageFont.load_default()
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _header(draw: ImageDraw.ImageDraw, width: int, title: str, same_camera_left_out: bool, truth: bool = True
            ) -> None:
    """The title line, then the legend: a swatch of each frame colour and what it means."""
    font = ImageFont.load_default()
    if title:
        draw.text((PAD, PAD), _fit(draw, title, width - 2 * PAD), fill=TEXT_COLOUR, font=font)
    x, y = PAD, PAD + 16
    entries = [(QUERY_COLOUR, "query"), (RIGHT_COLOUR, "same id (correct)"), (WRONG_COLOUR, "other id (wrong)")] \
        if truth else [(QUERY_COLOUR, "query"), (NO_TRUTH_COLOUR, "nearest images (no ground truth)")]
    for colour, text in entries:
        draw.rectangle((x, y + 1, x + 10, y + 11), fill=colour)
        draw.text((x + 14, y), text, fill=TEXT_COLOUR, font=font)
        x += 14 + int(draw.textlength(text, font=font)) + 12
    note = "caption: rank: distance" + ("; same id + same camera left out" if same_camera_left_out else "")
    draw.text((x, y), _fit(draw, note, max(0, width - x - PAD)), fill=TEXT_COLOUR, font=font)


PANEL = (300, 180)  # one chart
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 12, 22, 34  # plot-area margins inside a panel: labels live there
_COLUMNS = 3
FOOTER = 20  # the line under the charts naming the series that never changed


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _label(value: float) -> str:
    return f"{value:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) spanning [lo, hi]."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _tick_label(value: float, step: float) -> str:
    """A tick's text with as many decimals as the step needs (3g for very small or large values)."""
    if value != 0 and not 1e-3 <= abs(step) < 1e5:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _draw_chart(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str, xs: list, ys: list) -> None:
    """One line chart with round ticks on both axes; ``ys`` holds None where a record lacks the value (the line
    breaks there). The x axis is the epoch."""
    font = ImageFont.load_default()
    ox, oy = origin
    x0, y0 = ox + _LEFT, oy + _TOP
    x1, y1 = ox + PANEL[0] - _RIGHT, oy + PANEL[1] - _BOTTOM
    present = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    draw.text((x0, oy + 5), f"{title}   last {_label(present[-1][1])}", fill=TEXT_COLOUR, font=font)
    draw.line((x0, y0, x0, y1), fill=TEXT_COLOUR)
    draw.line((x0, y1, x1, y1), fill=TEXT_COLOUR)

    y_ticks = nice_ticks(min(y for _, y in present), max(y for _, y in present))
    lo, hi = y_ticks[0], y_ticks[-1]
    xlo, xhi = min(xs), max(xs)
    whole = all(float(x).is_integer() for x in xs)
    x_ticks = nice_ticks(xlo, xhi, 6)
    if whole:  # epochs: whole numbers only
        x_ticks = sorted({float(round(t)) for t in x_ticks if t == round(t)} | {xlo, xhi})
    x_ticks = [t for t in x_ticks if xlo <= t <= xhi] or [xlo]

    inset = 6  # keeps the extreme points off the axes

    def px(x: float) -> float:
        return (x0 + x1) / 2 if xhi == xlo else x0 + inset + (x - xlo) / (xhi - xlo) * (x1 - x0 - 2 * inset)

    def py(y: float) -> float:
        return (y0 + y1) / 2 if hi == lo else y1 - inset - (y - lo) / (hi - lo) * (y1 - y0 - 2 * inset)

    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else abs(lo) or 1.0
    for value in y_ticks:
        text = _tick_label(value, y_step)
        width = draw.textlength(text, font=font)
        draw.text((x0 - 5 - width, py(value) - 6), text, fill=TEXT_COLOUR, font=font)
        draw.line((x0 - 3, py(value), x0, py(value)), fill=TEXT_COLOUR)
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    previous_right = -math.inf
    for value in x_ticks:
        text = _label(value) if whole else _tick_label(value, x_step)
        width = draw.textlength(text, font=font)
        left = px(value) - width / 2
        draw.line((px(value), y1, px(value), y1 + 3), fill=TEXT_COLOUR)
        if left > previous_right + 3:  # crowded ticks keep their mark and lose their label
            draw.text((left, y1 + 5), text, fill=TEXT_COLOUR, font=font)
            previous_right = left + width
    axis = "epoch"
    draw.text((x1 - draw.textlength(axis, font=font), y1 + 18), axis, fill=TEXT_COLOUR, font=font)

    colour = QUERY_COLOUR
    points = list(zip(xs, ys, strict=True))
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        if ya is not None and yb is not None:
            draw.line((px(xa), py(ya), px(xb), py(yb)), fill=colour, width=2)
    for x, y in present:
        draw.ellipse((px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3), fill=colour)


def save_training_curves(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> list[str]:
    """Save a PNG with one small line chart per numeric key of the per-epoch ``records``; return the keys drawn.

    The x axis is each record's ``epoch`` (its position, from 1, when absent). Keys may come and go between
    records; a missing or non-finite value breaks that line. A series that holds one value over two or more
    points (a constant lr, a logit scale that never moved) gets no chart: a line under the charts gives its
    value. Charts are ``PANEL`` sized, three per row.
    """
    xs_raw = [r["epoch"] if _is_number(r.get("epoch")) else i + 1 for i, r in enumerate(records)]
    order = sorted(range(len(records)), key=lambda i: xs_raw[i])
    xs = [float(xs_raw[i]) for i in order]
    keys: list[str] = []
    for r in records:
        keys += [k for k, v in r.items() if k != "epoch" and k not in keys and _is_number(v)]
    series = {key: [float(records[i][key]) if _is_number(records[i].get(key)) else None for i in order]
              for key in keys}
    constant = {}
    for key, ys in series.items():
        values = [y for y in ys if y is not None]
        if len(values) > 1 and min(values) == max(values):
            constant[key] = values[0]
    drawn = [k for k in keys if k not in constant]

    if not drawn:
        image = Image.new("RGB", (PANEL[0], PANEL[1] + (FOOTER if constant else 0)), (255, 255, 255))
        _centred_text(ImageDraw.Draw(image), "no numeric values that change to plot", (0, 0, *PANEL))
    else:
        cols = min(_COLUMNS, len(drawn))
        rows = math.ceil(len(drawn) / cols)
        image = Image.new("RGB", (cols * PANEL[0], rows * PANEL[1] + (FOOTER if constant else 0)), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for n, key in enumerate(drawn):
            _draw_chart(draw, ((n % cols) * PANEL[0], (n // cols) * PANEL[1]), key, xs, series[key])
    if constant:
        draw = ImageDraw.Draw(image)
        text = "constant: " + ", ".join(f"{k} {_label(v)}" for k, v in constant.items())
        draw.text((PAD, image.height - FOOTER + 4), _fit(draw, text, image.width - 2 * PAD), fill=TEXT_COLOUR,
                  font=ImageFont.load_default())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return drawn
