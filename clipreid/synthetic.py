"""A synthetic player re-identification dataset in the DeepSportradar layout.

Every pipeline stage runs unchanged on it (tests, demo, no network). Identities are learnable but not
trivial: players of a sequence share team kits, court and lighting, so colour alone does not identify
them; what does is the jersey number (large on the back, smaller on the front), skin tone, hair, body
build, shoes and personal gear (socks, tights, arm sleeve, headband), under per-frame changes of pose,
view, scale, crop shape, lighting, blur, JPEG quality and occlusion by another player of the same sequence.

Layout (names from ``clipreid.layout``)::

    reid_training/{player:03d}_{seq:02d}_{frame:02d}.jpeg     train players 0..N-1
    reid_test/query/{player}_{seq}_00.jpeg                    test players N..N+M-1, frame 00 only
    reid_test/gallery/{player}_{seq}_{frame}.jpeg             frames 01.. of the test players
    reid_challenge/query/{n:05d}.jpeg                         one image per challenge player
    reid_challenge/gallery/{n:05d}.jpeg                       the other frames of the challenge players
    synthetic.json                                            the spec and the challenge ground truth

Challenge names are numbered per folder (query 0..q-1, gallery 0..g-1, like the challenge toolkit, which
offsets gallery ids by the query count itself), each folder as a random permutation so that name order
leaks nothing. The same integer can therefore name a query and a gallery image.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipreid import layout
from clipreid.errors import UserError
from clipreid.fileio import atomic_path, write_json
from clipreid.progress import progress_bar

_SUPERSAMPLE = 2  # draw at twice the size, then downsample: cheap anti-aliasing

Color = tuple[int, int, int]


@dataclass
class SyntheticSpec:
    """Sizes and knobs of a synthetic dataset; the defaults build in a few seconds on a CPU."""

    num_train_players: int = 48
    num_test_players: int = 12
    num_challenge_players: int = 12
    players_per_sequence: int = 6  # players sharing one sequence (game): kits, court, lighting
    frames_per_player: tuple[int, int] = (6, 12)  # inclusive range of frames per player
    single_image_players: int = 1  # train players that have only frame 00
    image_size: tuple[int, int] = (64, 128)  # base (width, height); crops vary around it
    occlusion_prob: float = 0.25  # chance that a second player of the sequence overlaps the crop
    blur_prob: float = 0.3  # chance of motion or gaussian blur
    jpeg_quality: tuple[int, int] = (60, 95)  # inclusive range
    seed: int = 0

    def validate(self) -> None:
        """Raise UserError when the sizes cannot make a dataset."""
        lo, hi = self.frames_per_player
        problems = []
        if min(self.num_train_players, self.num_test_players, self.num_challenge_players) < 1:
            problems.append("every split needs at least one player")
        if not 1 <= self.players_per_sequence <= 100:
            problems.append("players_per_sequence must be between 1 and 100 (jersey numbers 0-99 per team)")
        if not 2 <= lo <= hi:
            problems.append(f"frames_per_player must be (lo, hi) with 2 <= lo <= hi, got {self.frames_per_player}")
        if hi > 100:
            problems.append("frames_per_player above 100 does not fit the two-digit frame names")
        if not 0 <= self.single_image_players <= self.num_train_players:
            problems.append("single_image_players must be between 0 and num_train_players")
        if min(self.image_size) < 16:
            problems.append(f"image_size must be at least 16 px each way, got {self.image_size}")
        for name in ("occlusion_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be a probability between 0 and 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            problems.append(f"jpeg_quality must be (lo, hi) within 1..100, got {self.jpeg_quality}")
        if problems:
            raise UserError("invalid synthetic spec: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------------
# The world: sequences (games) with kits, players with looks.

_KIT_COLORS: tuple[Color, ...] = (
    (240, 240, 240), (25, 25, 30), (200, 30, 35), (120, 20, 35), (25, 35, 90), (30, 80, 200),
    (110, 170, 230), (30, 140, 60), (15, 70, 40), (240, 210, 40), (240, 120, 20), (100, 40, 140),
    (130, 130, 135), (0, 130, 140),
)
_SKIN: tuple[Color, ...] = (
    (250, 215, 185), (235, 190, 150), (205, 150, 110), (170, 115, 75), (120, 80, 50), (80, 52, 35),
)
_HAIR: tuple[Color, ...] = (
    (20, 15, 12), (55, 35, 20), (95, 60, 30), (200, 165, 90), (150, 70, 30), (140, 140, 140),
)
_SHOES: tuple[Color, ...] = (
    (245, 245, 245), (20, 20, 20), (210, 30, 30), (220, 240, 40), (40, 80, 210), (245, 130, 20),
    (120, 120, 120),
)
_GEAR: tuple[Color, ...] = (  # personal accessories: socks, tights, sleeves, headbands
    (245, 245, 245), (20, 20, 20), (210, 30, 30), (240, 220, 40), (40, 80, 210), (245, 130, 20),
    (30, 150, 60), (230, 90, 170), (120, 50, 160), (40, 200, 210),
)
_SEGMENTS = {  # seven-segment digits: which of a..g are lit
    "0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc",
    "5": "afgcd", "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}
_SEGMENT_ENDS = {  # in a unit digit box, x right, y down
    "a": ((0, 0), (1, 0)), "b": ((1, 0), (1, 0.5)), "c": ((1, 0.5), (1, 1)), "d": ((0, 1), (1, 1)),
    "e": ((0, 0.5), (0, 1)), "f": ((0, 0), (0, 0.5)), "g": ((0, 0.5), (1, 0.5)),
}


@dataclass
class _Kit:
    shirt: Color
    trim: Color  # number and edging
    shorts: Color
    socks: Color
    sleeveless: bool
    referee: bool = False


@dataclass
class _Sequence:
    index: int
    floor: Color
    paint: Color  # the painted area of the court
    line: Color
    wall: Color  # advertising boards / crowd behind the court
    brightness: float
    tint: tuple[float, float, float]


@dataclass
class _Player:
    player_id: int  # file name id (train / test), ground-truth id (challenge)
    sequence: _Sequence
    kit: _Kit
    number: str  # "" for referees
    skin: Color
    hair: Color
    hair_style: str  # "short", "shaved", "long"
    headband: Color | None
    shoes: Color
    socks: Color  # personal, not the kit's: teammates differ
    sock_top: float  # where the sock ends between knee (0) and foot (1)
    tights: Color | None  # compression tights under the shorts, down to the knee
    sleeve: Color | None  # compression sleeve on the right arm
    build: float  # width relative to height
    legs: float  # leg length relative to the torso
    head: float
    num_frames: int


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for one part of the world, so that nothing depends on drawing order."""
    return np.random.default_rng([seed, *key])


def _jitter(rng: np.random.Generator, color: Color, amount: float) -> Color:
    c = np.asarray(color, dtype=np.float64) + rng.normal(0.0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: tuple[Color, ...]) -> Color:
    return options[int(rng.integers(len(options)))]


def _contrast(color: Color) -> Color:
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (25, 25, 30) if luma > 140 else (245, 245, 245)


def _make_kits(rng: np.random.Generator) -> tuple[_Kit, _Kit, _Kit]:
    """Two team kits of clearly different shirt colours, and a referee kit."""
    first, second = rng.choice(len(_KIT_COLORS), 2, replace=False)
    kits = []
    for index in (first, second):
        shirt = _jitter(rng, _KIT_COLORS[int(index)], 8)
        shorts = shirt if rng.random() < 0.7 else _jitter(rng, _pick(rng, _KIT_COLORS), 8)
        socks = _pick(rng, ((240, 240, 240), (25, 25, 30), shirt))
        kits.append(_Kit(shirt, _contrast(shirt), shorts, socks, sleeveless=bool(rng.random() < 0.7)))
    gray = rng.random() < 0.5
    shirt = (150, 150, 155) if gray else (235, 235, 235)
    referee = _Kit(shirt, (20, 20, 20), (25, 25, 25), (25, 25, 25), sleeveless=False, referee=True)
    return kits[0], kits[1], referee


def _make_sequence(seed: int, index: int) -> tuple[_Sequence, tuple[_Kit, _Kit, _Kit]]:
    rng = _rng(seed, 1, index)
    if rng.random() < 0.7:  # wooden floor
        floor = _jitter(rng, (200, 160, 115), 15)
    else:  # painted sports floor
        floor = _jitter(rng, _pick(rng, ((60, 95, 150), (60, 120, 80), (150, 150, 150), (170, 80, 60))), 15)
    paint = _jitter(rng, _pick(rng, _KIT_COLORS), 20)
    line = _pick(rng, ((245, 245, 245), (240, 220, 60), (30, 30, 30)))
    wall = _jitter(rng, (60, 60, 70), 30)
    tint = tuple(float(v) for v in rng.uniform(0.93, 1.07, 3))
    sequence = _Sequence(index, floor, paint, line, wall, float(rng.uniform(0.8, 1.1)), tint)  # type: ignore[arg-type]
    return sequence, _make_kits(rng)


def _make_players(spec: SyntheticSpec) -> dict[str, list[_Player]]:
    """All players of the three splits; every sequence holds players of one split only."""
    sizes = {"train": spec.num_train_players, "test": spec.num_test_players, "challenge": spec.num_challenge_players}
    lo, hi = spec.frames_per_player
    single = set(_rng(spec.seed, 4).choice(spec.num_train_players, spec.single_image_players, replace=False).tolist())
    players: dict[str, list[_Player]] = {}
    next_id, next_sequence = 0, 0
    for split, size in sizes.items():
        players[split] = []
        for start in range(0, size, spec.players_per_sequence):
            count = min(spec.players_per_sequence, size - start)
            sequence, (kit_a, kit_b, referee) = _make_sequence(spec.seed, next_sequence)
            rng = _rng(spec.seed, 2, next_sequence)
            next_sequence += 1
            # At most one referee per sequence; the rest split into the two teams, numbers unique per team.
            has_referee = count >= 4 and rng.random() < 0.5
            kits = [referee] if has_referee else []
            kits += [kit_a if i % 2 == 0 else kit_b for i in range(count - len(kits))]
            kits = [kits[int(i)] for i in rng.permutation(count)]
            numbers = {id(kit_a): rng.permutation(100), id(kit_b): rng.permutation(100)}
            for slot, kit in enumerate(kits):
                number = "" if kit.referee else str(int(numbers[id(kit)][slot]))
                frames = 1 if split == "train" and next_id in single else int(rng.integers(lo, hi + 1))
                players[split].append(_Player(
                    player_id=next_id,
                    sequence=sequence,
                    kit=kit,
                    number=number,
                    skin=_jitter(rng, _pick(rng, _SKIN), 6),
                    hair=_jitter(rng, _pick(rng, _HAIR), 6),
                    hair_style=str(rng.choice(["short", "short", "shaved", "long"])),
                    headband=_pick(rng, _GEAR) if rng.random() < 0.3 else None,
                    shoes=_pick(rng, _SHOES),
                    socks=_pick(rng, _GEAR),
                    sock_top=float(rng.choice([0.05, 0.45, 0.8])),
                    tights=_pick(rng, _GEAR) if rng.random() < 0.3 else None,
                    sleeve=_pick(rng, _GEAR) if rng.random() < 0.3 else None,
                    build=float(rng.uniform(0.8, 1.25)),
                    legs=float(rng.uniform(0.88, 1.12)),
                    head=float(rng.uniform(0.9, 1.1)),
                    num_frames=frames,
                ))
                next_id += 1
    return players


# --------------------------------------------------------------------------------------------------------
# Drawing one player.


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(min(255, c * factor)) for c in color)  # type: ignore[return-value]


class _Figure:
    """Maps body coordinates (figure height 1, x to the player's front) onto the canvas."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, height: float, mirror: bool):
        self.draw, self.cx, self.top, self.height = draw, cx, top, height
        self.sign = -1.0 if mirror else 1.0

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + self.sign * x * self.height, self.top + y * self.height

    def segment(self, p, q, width: float, color: Color) -> None:
        a, b, w = self.xy(*p), self.xy(*q), max(1.0, width * self.height)
        self.draw.line([a, b], fill=color, width=int(round(w)))
        for x, y in (a, b):  # round joints
            self.draw.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=color)

    def polygon(self, points, color: Color, outline: Color | None = None, width: float = 0.0) -> None:
        pts = [self.xy(*p) for p in points]
        self.draw.polygon(pts, fill=color, outline=outline, width=max(1, int(round(width * self.height))))

    def ellipse(self, center, rx: float, ry: float, color: Color) -> None:
        x, y = self.xy(*center)
        rx, ry = abs(rx) * self.height, abs(ry) * self.height
        self.draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=color)

    def chord(self, center, rx: float, ry: float, start: float, end: float, color: Color) -> None:
        x, y = self.xy(*center)
        rx, ry = rx * self.height, ry * self.height
        if self.sign < 0:  # mirror the angles (PIL measures clockwise from +x)
            start, end = 180 - end, 180 - start
        self.draw.chord([x - rx, y - ry, x + rx, y + ry], start, end, fill=color)


def _lerp(p, q, t: float) -> tuple[float, float]:
    return p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t


def _limb(start, angle: float, length: float) -> tuple[float, float]:
    """End of a limb hanging from ``start`` at ``angle`` radians from straight down, towards +x."""
    return start[0] + length * math.sin(angle), start[1] + length * math.cos(angle)


def _number(fig: _Figure, text: str, center, digit_h: float, color: Color) -> None:
    """Seven-segment digits: readable strokes without any font file."""
    digit_w, gap, stroke = 0.55 * digit_h, 0.25 * digit_h, 0.17 * digit_h
    total = len(text) * digit_w + (len(text) - 1) * gap
    x0 = center[0] - fig.sign * total / 2  # digits read left to right on the canvas even when mirrored
    for i, char in enumerate(text):
        left = x0 + fig.sign * i * (digit_w + gap)
        for seg in _SEGMENTS[char]:
            (ax, ay), (bx, by) = _SEGMENT_ENDS[seg]
            # Segment x is measured on the canvas, so mirror it back through the figure's sign.
            p = (left + fig.sign * ax * digit_w, center[1] - digit_h / 2 + ay * digit_h)
            q = (left + fig.sign * bx * digit_w, center[1] - digit_h / 2 + by * digit_h)
            fig.segment(p, q, stroke, color)


def _draw_player(draw: ImageDraw.ImageDraw, player: _Player, rng: np.random.Generator,
                 cx: float, top: float, height: float) -> None:
    """Draw one player in a random pose and view, ``height`` pixels tall from ``top``."""
    kit = player.kit
    view = str(rng.choice(["front", "back", "side"], p=[0.35, 0.35, 0.3]))
    fig = _Figure(draw, cx, top, height, mirror=bool(rng.random() < 0.5))
    motion = str(rng.choice(["stand", "run", "crouch"], p=[0.35, 0.5, 0.15]))
    side = view == "side"

    # Skeleton in figure units: top of the head at y=0, feet near y=1.
    head_r = 0.062 * player.head
    neck_y = 2 * head_r + 0.012
    sh_y = neck_y + 0.03
    torso = 0.3 / player.legs**0.5
    hip_y = sh_y + torso
    thigh, shin = 0.235 * player.legs, 0.225 * player.legs
    upper_arm, forearm = 0.165, 0.15
    arm_w, leg_w = 0.045 * player.build, 0.06 * player.build
    sh_half = (0.06 if side else 0.115) * player.build
    hip_half = (0.045 if side else 0.07) * player.build
    lean = 0.0
    if motion == "crouch":
        hip_y += 0.08  # bent knees lower the body relative to the crop

    amp = {"stand": 0.12, "run": rng.uniform(0.4, 0.9), "crouch": 0.2}[motion]
    phase = rng.uniform(0, 2 * math.pi)
    swing = amp * math.sin(phase)
    legs, arms = [], []  # (hip or shoulder, knee or elbow, foot or hand), far side first
    if side:
        lean = rng.uniform(0.05, 0.25) * (motion == "run")
        for s in (swing, -swing):
            knee_bend = rng.uniform(0.05, 0.3) + (rng.uniform(0.3, 1.1) if s < 0 else 0.0)
            if motion == "crouch":
                s, knee_bend = 0.6, 1.2
            hip = (0.0, hip_y)
            knee = _limb(hip, s, thigh)
            legs.append((hip, knee, _limb(knee, s - knee_bend, shin)))
        for s in (-0.8 * swing, 0.8 * swing):
            shoulder = (lean * torso, sh_y)
            elbow = _limb(shoulder, s, upper_arm)
            arms.append((shoulder, elbow, _limb(elbow, s + rng.uniform(0.4, 1.4), forearm)))
    else:
        for sgn, s in ((-1, swing), (1, -swing)):
            spread = rng.uniform(0.02, 0.15) + (0.35 if motion == "crouch" else 0.0)
            fore = math.cos(s)  # swinging towards or away from the camera shortens the leg
            hip = (sgn * hip_half * 0.6, hip_y)
            knee = _limb(hip, sgn * spread, thigh * (0.75 if motion == "crouch" else fore))
            foot_angle = sgn * (spread * 0.2 if motion == "crouch" else spread)
            legs.append((hip, knee, _limb(knee, foot_angle, shin * math.cos(max(0.0, -s)))))
        for sgn in (-1, 1):
            raised = rng.random() < 0.08
            out = rng.uniform(2.3, 2.9) if raised else rng.uniform(0.08, 0.5) + (0.5 if motion == "crouch" else 0)
            shoulder = (sgn * sh_half, sh_y + 0.01)
            elbow = _limb(shoulder, sgn * out, upper_arm * rng.uniform(0.75, 1.0))
            hand = _limb(elbow, sgn * (out - rng.uniform(-0.2, 0.6)), forearm * rng.uniform(0.6, 1.0))
            arms.append((shoulder, elbow, hand))

    def draw_leg(leg, factor: float) -> None:
        hip, knee, foot = leg
        skin, shorts = _shade(player.skin, factor), _shade(kit.shorts, factor)
        thigh_color = _shade(player.tights, factor) if player.tights is not None and not kit.referee else skin
        fig.segment(hip, knee, leg_w, shorts if kit.referee else thigh_color)
        fig.segment(knee, foot, leg_w * 0.85, shorts if kit.referee else skin)
        if not kit.referee:
            fig.segment(_lerp(knee, foot, player.sock_top), foot, leg_w * 0.9, _shade(player.socks, factor))
        forward = 0.035 if side else 0.0
        fig.ellipse((foot[0] + forward, foot[1] + 0.012), 0.05 if side else 0.035, 0.024,
                    _shade(player.shoes, factor))

    def draw_arm(arm, factor: float, is_right: bool) -> None:
        shoulder, elbow, hand = arm
        skin = _shade(player.skin, factor)
        fig.segment(shoulder, elbow, arm_w, skin)
        fig.segment(elbow, hand, arm_w * 0.85, skin)
        if player.sleeve is not None and is_right:
            fig.segment(_lerp(elbow, hand, 0.1), _lerp(elbow, hand, 0.8), arm_w * 0.9, _shade(player.sleeve, factor))
        if not kit.sleeveless:
            fig.segment(shoulder, _lerp(shoulder, elbow, 0.45), arm_w * 1.25, _shade(kit.shirt, factor))
        fig.ellipse(hand, arm_w * 0.6, arm_w * 0.6, skin)

    def draw_body() -> None:
        shorts_len = rng.uniform(0.45, 0.7) * thigh
        waist = hip_y - 0.02
        if kit.referee:
            fig.polygon([(-hip_half, waist), (hip_half, waist), (hip_half, hip_y + 0.04), (-hip_half, hip_y + 0.04)],
                        kit.shorts)
        else:  # shorts: waist band down to each thigh
            ends = [_lerp(leg[0], leg[1], shorts_len / thigh) for leg in legs]
            w = leg_w * 0.75
            fig.polygon([(-hip_half - 0.01, waist), (hip_half + 0.01, waist),
                         (max(ends[0][0], ends[1][0]) + w, max(ends[0][1], ends[1][1])),
                         (0.0, hip_y + 0.03),
                         (min(ends[0][0], ends[1][0]) - w, max(ends[0][1], ends[1][1]))], kit.shorts)
        shoulder_x = lean * torso
        corners = [(shoulder_x - sh_half, sh_y), (shoulder_x + sh_half, sh_y),
                   (hip_half + 0.01, hip_y), (-hip_half - 0.01, hip_y)]
        fig.polygon(corners, kit.shirt, outline=None if kit.referee else kit.trim, width=0.008)
        if kit.referee and kit.shirt[0] > 200:  # black and white stripes
            for k in range(1, 8, 2):
                t0, t1 = k / 8, (k + 1) / 8
                fig.polygon([_lerp(corners[0], corners[1], t0), _lerp(corners[0], corners[1], t1),
                             _lerp(corners[3], corners[2], t1), _lerp(corners[3], corners[2], t0)], (25, 25, 25))
        # Basketball jerseys carry the number on both sides: large on the back, smaller on the front.
        if player.number and view == "back":
            _number(fig, player.number, (shoulder_x * 0.5, sh_y + torso * 0.45), torso * 0.42, kit.trim)
        elif player.number and view == "front":
            _number(fig, player.number, (shoulder_x * 0.5, sh_y + torso * 0.5), torso * 0.3, kit.trim)

    def draw_head() -> None:
        center = (lean * torso * 1.1, head_r + 0.005)
        hair = player.hair
        if player.hair_style == "long" and view != "back":
            fig.ellipse((center[0] - (0.02 if side else 0), center[1] + head_r * 0.6), head_r * 1.1, head_r * 1.2, hair)
        fig.ellipse(center, head_r * 0.85, head_r, player.skin)
        if player.hair_style == "shaved":
            fig.chord(center, head_r * 0.85, head_r, 180, 360, _shade(hair, 1.3))
        elif view == "back":
            extra = 1.6 if player.hair_style == "long" else 1.0
            fig.ellipse((center[0], center[1] + head_r * 0.25 * (extra - 1)), head_r * 0.88, head_r * extra, hair)
        elif side:  # hair over the top and the back of the head
            fig.chord(center, head_r * 0.9, head_r * 1.05, 110, 360, hair)
        else:
            fig.chord(center, head_r * 0.9, head_r * 1.05, 175, 365, hair)
        if player.headband is not None:
            y = center[1] - head_r * 0.35
            fig.segment((center[0] - head_r * 0.85, y), (center[0] + head_r * 0.85, y), 0.018, player.headband)

    if side:  # far limbs first and darker, then the body, then the near limbs
        draw_leg(legs[0], 0.8)
        draw_arm(arms[0], 0.8, is_right=False)
        draw_body()
        draw_leg(legs[1], 1.0)
        draw_head()
        draw_arm(arms[1], 1.0, is_right=True)
    else:
        for leg in legs:
            draw_leg(leg, 1.0)
        draw_body()
        draw_arm(arms[0], 1.0, is_right=False)
        draw_arm(arms[1], 1.0, is_right=True)
        draw_head()


# --------------------------------------------------------------------------------------------------------
# One crop: background, target player, maybe an occluder, then camera effects.


def _crop_size(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[int, int]:
    """Crops vary in size (about 0.65-1.85x the base width) and aspect (height 0.75-1.5x the base ratio)."""
    base_w, base_h = spec.image_size
    width = base_w * math.exp(rng.uniform(math.log(0.65), math.log(1.85)))
    aspect = base_h / base_w * math.exp(rng.uniform(math.log(0.75), math.log(1.5)))
    return max(16, round(width)), max(16, round(width * aspect))


def _background(sequence: _Sequence, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, sequence.floor)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.3:  # the painted key area
        x = rng.uniform(-0.5, 0.8) * width
        draw.polygon([(x, height * rng.uniform(0.3, 0.7)), (x + width, height * rng.uniform(0.3, 0.7)),
                      (x + width * 1.5, height), (x - width * 0.3, height)], fill=sequence.paint)
    if rng.random() < 0.35:  # boards and crowd behind the court
        draw.rectangle([0, 0, width, height * rng.uniform(0.05, 0.3)], fill=_jitter(rng, sequence.wall, 25))
    for _ in range(int(rng.integers(0, 3))):  # court lines
        y0, y1 = rng.uniform(0.2, 1.0, 2) * height
        draw.line([(-width, y0), (2 * width, y1)], fill=sequence.line, width=int(rng.integers(1, 4)) * _SUPERSAMPLE)
    return image


def _camera(image: Image.Image, sequence: _Sequence, spec: SyntheticSpec, rng: np.random.Generator) -> Image.Image:
    """Blur, lighting, colour cast and sensor noise; returns the final RGB crop."""
    if rng.random() < spec.blur_prob:
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
        else:  # horizontal motion blur: the mean of shifted copies
            pixels = np.asarray(image, dtype=np.float32)
            length = int(rng.integers(2, 6))
            padded = np.pad(pixels, ((0, 0), (length, length), (0, 0)), mode="edge")
            offsets = range(-(length // 2), length - length // 2)
            pixels = np.mean([padded[:, length + o: length + o + pixels.shape[1]] for o in offsets], axis=0)
            image = Image.fromarray(pixels.astype(np.uint8))
    pixels = np.asarray(image, dtype=np.float32)
    height, width = pixels.shape[:2]
    gain = sequence.brightness * rng.uniform(0.8, 1.2) * np.asarray(sequence.tint) * rng.uniform(0.96, 1.04, 3)
    contrast = rng.uniform(0.75, 1.15)
    # A soft light gradient across the crop, as from stadium lights.
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    ramp = 1 + gx * np.linspace(-1, 1, width)[None, :] + gy * np.linspace(-1, 1, height)[:, None]
    mean = pixels.mean()
    pixels = ((pixels - mean) * contrast + mean) * gain[None, None, :] * ramp[:, :, None]
    pixels += rng.normal(0.0, rng.uniform(2.0, 7.0), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _render_crop(player: _Player, mates: list[_Player], spec: SyntheticSpec, rng: np.random.Generator) -> Image.Image:
    """One crop of ``player``; ``mates`` are the other players of its sequence (possible occluders)."""
    size = _crop_size(spec, rng)
    canvas = (size[0] * _SUPERSAMPLE, size[1] * _SUPERSAMPLE)
    image = _background(player.sequence, rng, canvas)
    draw = ImageDraw.Draw(image)
    width, height = canvas
    body = height * rng.uniform(0.8, 0.96)
    top = rng.uniform(0.0, height - body) if height > body else 0.0
    cx = width * (0.5 + rng.uniform(-0.08, 0.08))
    shadow = _shade(player.sequence.floor, 0.7)
    draw.ellipse([cx - 0.18 * body, top + body * 0.95, cx + 0.18 * body, top + body * 1.02], fill=shadow)

    occluder = None
    if mates and rng.random() < spec.occlusion_prob:
        other = mates[int(rng.integers(len(mates)))]
        in_front = rng.random() < 0.5
        # In front it must leave most of the target visible; behind it may overlap more.
        offset = rng.uniform(0.4, 0.7) if in_front else rng.uniform(0.25, 0.6)
        other_body = body * rng.uniform(0.85, 1.15)
        other_top = top + body - other_body + rng.uniform(-0.08, 0.08) * body
        occluder = (other, in_front, cx + rng.choice([-1, 1]) * offset * width, other_top, other_body)
    if occluder is not None and not occluder[1]:
        _draw_player(draw, occluder[0], rng, *occluder[2:])
    _draw_player(draw, player, rng, cx, top, body)
    if occluder is not None and occluder[1]:
        _draw_player(draw, occluder[0], rng, *occluder[2:])

    image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return _camera(image, player.sequence, spec, rng)


# --------------------------------------------------------------------------------------------------------
# The dataset on disk.


def _check_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder; choose another output folder")
    if not root.exists() or not any(root.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{root} already exists and is not empty; use --force (overwrite=True) to replace it")
    # Overwriting deletes the folder, so only ever delete something that looks like a dataset.
    if not ((root / layout.SYNTHETIC_INFO).exists() or any((root / d).is_dir() for d in layout.IMAGE_DIRS)):
        raise UserError(f"{root} does not look like a dataset folder, so it is not replaced; "
                        "choose an empty or new output folder")


def _save(image: Image.Image, path: Path, rng: np.random.Generator, spec: SyntheticSpec) -> None:
    quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
    image.save(path, format="JPEG", quality=quality)


def generate_synthetic_dataset(root: str | os.PathLike, spec: SyntheticSpec | None = None, *,
                               overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Write a synthetic dataset to ``root`` in the DeepSportradar layout; return the image count per folder.

    The folder appears only when complete (built beside it and renamed). The same spec gives byte-identical
    files. An existing non-empty ``root`` is replaced only with ``overwrite``, and only if it looks like a
    dataset folder. ``spec`` defaults to ``SyntheticSpec()``.
    """
    spec = spec if spec is not None else SyntheticSpec()
    spec.validate()
    root = Path(root)
    _check_root(root, overwrite)
    players = _make_players(spec)
    total = sum(p.num_frames for split in players.values() for p in split)
    counts = {name: 0 for name in layout.IMAGE_DIRS}
    truth: dict[str, dict[int, int]] = {layout.CHALLENGE_QUERY_DIR: {}, layout.CHALLENGE_GALLERY_DIR: {}}

    with atomic_path(root, is_dir=True) as tmp, progress_bar(total=total, desc="synthetic data", unit="img",
                                                       disable=not progress) as bar:
        for name in layout.IMAGE_DIRS:
            (tmp / name).mkdir(parents=True)
        # Challenge names: per folder, a random permutation of 0..n-1 in generation order.
        n_query = len(players["challenge"])
        n_gallery = sum(p.num_frames - 1 for p in players["challenge"])
        names = _rng(spec.seed, 5)
        challenge_ids = {layout.CHALLENGE_QUERY_DIR: iter(names.permutation(n_query).tolist()),
                         layout.CHALLENGE_GALLERY_DIR: iter(names.permutation(n_gallery).tolist())}

        for split, split_players in players.items():
            by_sequence: dict[int, list[_Player]] = {}
            for player in split_players:
                by_sequence.setdefault(player.sequence.index, []).append(player)
            for player in split_players:
                mates = [p for p in by_sequence[player.sequence.index] if p is not player]
                for frame in range(player.num_frames):
                    rng = _rng(spec.seed, 3, player.player_id, frame)
                    image = _render_crop(player, mates, spec, rng)
                    if split == "challenge":
                        query = frame == layout.QUERY_FRAME
                        folder = layout.CHALLENGE_QUERY_DIR if query else layout.CHALLENGE_GALLERY_DIR
                        index = next(challenge_ids[folder])
                        truth[folder][index] = player.player_id
                        name = layout.challenge_image_name(index)
                    else:
                        if split == "train":
                            folder = layout.TRAIN_DIR
                        else:
                            folder = layout.TEST_QUERY_DIR if frame == layout.QUERY_FRAME else layout.TEST_GALLERY_DIR
                        name = layout.player_image_name(player.player_id, player.sequence.index, frame)
                    _save(image, tmp / folder / name, rng, spec)
                    counts[folder] += 1
                    bar.update()

        info = {
            "spec": asdict(spec),
            "counts": counts,
            # Ground truth for scoring challenge predictions on synthetic data: file id -> player id.
            layout.CHALLENGE_PLAYERS: {folder: {str(k): v for k, v in sorted(ids.items())}
                                       for folder, ids in truth.items()},
        }
        write_json(tmp / layout.SYNTHETIC_INFO, info)
    return counts


def save_contact_sheet(root: str | os.PathLike, path: str | os.PathLike, players: int = 8, frames: int = 6) -> Path:
    """Save a PNG grid of training crops, one row per player (the first ``players`` ids), for a quick look.

    Works on any folder in the DeepSportradar layout. Crops are letterboxed into 64 x 128 (width x height) cells.
    """
    train_dir = Path(root) / layout.TRAIN_DIR
    by_player: dict[int, list[Path]] = {}
    for file in layout.image_files(train_dir, recursive=False)[0] if train_dir.is_dir() else []:
        try:
            player, _, _ = layout.parse_player_name(file.stem)
        except ValueError:
            continue
        by_player.setdefault(player, []).append(file)
    if not by_player:
        raise UserError(f"no training images in {train_dir}; generate or download the data first")
    rows = [by_player[p][:frames] for p in sorted(by_player)[:players]]
    label_w, pad = 36, 4
    cell_w, cell_h = 64, 128
    sheet = Image.new("RGB", (label_w + frames * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for r, files in enumerate(rows):
        y = pad + r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 5), files[0].stem.split("_")[0], fill=(230, 230, 230))
        for c, file in enumerate(files):
            with Image.open(file) as crop:
                crop = crop.convert("RGB")
                scale = min(cell_w / crop.width, cell_h / crop.height)
                crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
            x = label_w + pad + c * (cell_w + pad)
            sheet.paste(crop, (x + (cell_w - crop.width) // 2, y + (cell_h - crop.height) // 2))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
