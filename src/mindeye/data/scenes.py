"""Procedural scenes: the stimuli of the simulated subject (see docs/simulated-subject.md).

A scene is 1-3 objects (12 shape categories, 12 colours, 5 surface textures, varied size, position
and rotation) painted over one of 5 background types. Everything is drawn from a per-image random
stream ``default_rng([seed, STIMULUS_STREAM, image_index])``, so image *k* is the same whatever the
chunking, the image size or the number of images generated.

Rendering is pure numpy: each shape is an implicit function (approximately a signed distance in
pixels, negative inside) evaluated on the coordinate grid of its bounding box, which gives
anti-aliased edges for free (alpha = clip(0.5 - distance, 0, 1)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

STIMULUS_STREAM = 1  # second entry of the seed tuple; other streams live in mindeye.data.simulate

CATEGORIES = ("circle", "ellipse", "square", "bar", "triangle", "diamond", "hexagon", "star",
              "cross", "ring", "crescent", "heart")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (50, 170, 60),
    "cyan": (40, 200, 210), "blue": (40, 80, 220), "purple": (140, 60, 190), "pink": (240, 130, 180),
    "brown": (130, 80, 40), "white": (245, 245, 245), "black": (20, 20, 20), "grey": (128, 128, 128),
}
COLORS = tuple(PALETTE)
TEXTURES = ("solid", "striped", "dotted", "checkered", "gradient")
BACKGROUNDS = ("solid", "gradient", "radial", "noise", "horizon")
SIZE_WORDS = ((0.11, "small"), (0.18, "medium"), (1.0, "large"))  # radius as a fraction of the image


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> list[float]:
    return np.clip(np.asarray(rgb, np.float64) / 255 + rng.uniform(-amount, amount, 3), 0, 1).round(4).tolist()


def sample_scene(rng: np.random.Generator) -> dict[str, Any]:
    """Draw the attributes of one scene (resolution independent: positions and sizes in [0, 1])."""
    bg_type = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg_names = [COLORS[i] for i in rng.choice(len(COLORS), 2, replace=False)]
    # Backgrounds are muted (mixed with grey) so objects stand out, as in most photographs.
    grey = np.full(3, 0.5)
    bg_rgb = [(0.45 * np.asarray(_jitter(rng, PALETTE[n], 0.08)) + 0.55 * grey).round(4).tolist()
              for n in bg_names]
    background = {
        "type": bg_type, "color": bg_names[0], "color2": bg_names[1], "rgb": bg_rgb[0], "rgb2": bg_rgb[1],
        "angle": round(float(rng.uniform(0, 2 * np.pi)), 4),
        "horizon": round(float(rng.uniform(0.3, 0.7)), 4), "tilt": round(float(rng.uniform(-0.15, 0.15)), 4),
        "noise_cells": int(rng.integers(3, 9)), "noise_seed": int(rng.integers(2**31)),
    }
    grain_seed = int(rng.integers(2**31))
    n_objects = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    objects = []
    for _ in range(n_objects):
        size = float(np.exp(rng.uniform(np.log(0.07), np.log(0.3))))
        lo = min(0.5, max(0.08, size * 0.8))
        color = COLORS[rng.integers(len(COLORS))]
        # Secondary colour of a texture: another palette colour half the time, else a shade of the first.
        if rng.random() < 0.5:
            color2_rgb = _jitter(rng, PALETTE[COLORS[rng.integers(len(COLORS))]], 0.06)
        else:
            base = np.asarray(PALETTE[color]) / 255
            shade = base * 0.45 if base.mean() > 0.4 else base * 0.5 + 0.5
            color2_rgb = np.clip(shade, 0, 1).round(4).tolist()
        objects.append({
            "category": CATEGORIES[rng.integers(len(CATEGORIES))],
            "color": color, "rgb": _jitter(rng, PALETTE[color], 0.07), "rgb2": color2_rgb,
            "texture": TEXTURES[rng.integers(len(TEXTURES))],
            "size": round(size, 4),
            "x": round(float(rng.uniform(lo, 1 - lo)), 4), "y": round(float(rng.uniform(lo, 1 - lo)), 4),
            "rotation": round(float(rng.uniform(0, 2 * np.pi)), 4),
            "aspect": round(float(rng.uniform(0.4, 0.7)), 4),
            "texture_period": round(float(rng.uniform(0.3, 0.6)), 4),
            "texture_angle": round(float(rng.uniform(0, np.pi)), 4),
        })
    objects.sort(key=lambda o: -o["size"])  # painter's order: big things behind small ones
    return {"background": background, "objects": objects, "n_objects": n_objects, "grain_seed": grain_seed}


def size_word(size: float) -> str:
    return next(word for limit, word in SIZE_WORDS if size < limit)


def position_words(x: float, y: float) -> str:
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    if not row and not col:
        return "in the center"
    return f"at the {' '.join(w for w in (row, col) if w)}"


def caption(scene: dict[str, Any]) -> str:
    """A plain-English description, e.g. 'a large red striped star at the top left on a blue gradient background'."""
    parts = []
    for o in scene["objects"]:
        tex = "" if o["texture"] == "solid" else f"{o['texture']} "
        parts.append(f"a {size_word(o['size'])} {o['color']} {tex}{o['category']} {position_words(o['x'], o['y'])}")
    objs = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    bg = scene["background"]
    kind = {"solid": "plain", "gradient": "gradient", "radial": "radial gradient", "noise": "mottled",
            "horizon": "two-tone landscape"}[bg["type"]]
    colors = bg["color"] if bg["type"] == "solid" else f"{bg['color']} and {bg['color2']}"
    return f"{objs} on a {colors} {kind} background"


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _regular_polygon(u: np.ndarray, v: np.ndarray, radius: float, n: int) -> np.ndarray:
    """Distance to the nearest edge line of a regular n-gon (circumradius ``radius``, a vertex on +u)."""
    rho = np.hypot(u, v)
    wedge = 2 * np.pi / n
    phi = np.mod(np.arctan2(v, u), wedge) - wedge / 2
    return rho * np.cos(phi) - radius * np.cos(np.pi / n)


def _box(u: np.ndarray, v: np.ndarray, hu: float, hv: float) -> np.ndarray:
    return np.maximum(np.abs(u) - hu, np.abs(v) - hv)


def _shape_distance(category: str, u: np.ndarray, v: np.ndarray, r: float, aspect: float) -> np.ndarray:
    """Implicit shape in object coordinates (pixels); < 0 inside, ~ signed distance near the edge."""
    if category == "circle":
        return np.hypot(u, v) - r
    if category == "ellipse":
        b = r * aspect
        return (np.hypot(u / r, v / b) - 1) * b
    if category == "square":
        return _box(u, v, 0.8 * r, 0.8 * r)
    if category == "bar":
        return _box(u, v, r, 0.35 * r)
    if category == "triangle":
        return _regular_polygon(u, v, 1.1 * r, 3)
    if category == "diamond":
        return (np.abs(u) + np.abs(v) / 0.6 - r) / np.hypot(1, 1 / 0.6)
    if category == "hexagon":
        return _regular_polygon(u, v, 0.95 * r, 6)
    if category == "star":
        # Straight-edged 5-point star: radius of the edge between an outer and an inner vertex.
        outer, inner, half = r, 0.42 * r, np.pi / 5
        phi = np.mod(np.arctan2(v, u), 2 * half)
        phi = np.where(phi > half, 2 * half - phi, phi)
        edge = outer * inner * np.sin(half) / (inner * np.sin(half - phi) + outer * np.sin(phi))
        return (np.hypot(u, v) - edge) * 0.55
    if category == "cross":
        return np.minimum(_box(u, v, r, 0.3 * r), _box(u, v, 0.3 * r, r))
    if category == "ring":
        return np.abs(np.hypot(u, v) - 0.72 * r) - 0.28 * r
    if category == "crescent":
        return np.maximum(np.hypot(u, v) - r, 0.85 * r - np.hypot(u - 0.45 * r, v))
    if category == "heart":
        lobes = np.minimum(np.hypot(u + 0.42 * r, v + 0.25 * r), np.hypot(u - 0.42 * r, v + 0.25 * r)) - 0.5 * r
        tip = (np.abs(u) + np.abs(v - 0.05 * r) - 0.85 * r) / np.sqrt(2)
        return np.minimum(lobes, np.where(v > -0.2 * r, tip, np.inf))
    raise ValueError(f"unknown category {category!r}")


def _texture(kind: str, u: np.ndarray, v: np.ndarray, r: float, period: float, angle: float) -> np.ndarray:
    """Blend factor in [0, 1] between an object's two colours."""
    if kind == "solid":
        return np.zeros_like(u)
    p = max(3.0, period * r)
    a = np.cos(angle) * u + np.sin(angle) * v
    b = -np.sin(angle) * u + np.cos(angle) * v
    if kind == "striped":
        return np.clip(np.sin(2 * np.pi * a / p) * p / 4 + 0.5, 0, 1)
    if kind == "dotted":
        d = np.hypot(np.mod(a, p) - p / 2, np.mod(b, p) - p / 2)
        return np.clip(0.5 - (d - 0.28 * p), 0, 1)
    if kind == "checkered":
        return np.clip(np.sin(2 * np.pi * a / p) * np.sin(2 * np.pi * b / p) * p + 0.5, 0, 1)
    if kind == "gradient":
        return np.clip((a / r + 1) / 2, 0, 1)
    raise ValueError(f"unknown texture {kind!r}")


def _upsample_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells) linear-interpolation matrix: smooth noise = M @ grid @ M.T."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    m = np.zeros((size, cells))
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _background(bg: dict[str, Any], size: int) -> np.ndarray:
    c1, c2 = np.asarray(bg["rgb"], np.float32), np.asarray(bg["rgb2"], np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = coords[:, None], coords[None, :]
    kind = bg["type"]
    if kind == "solid":
        return np.broadcast_to(c1, (size, size, 3)).copy()
    if kind == "gradient":
        t = (np.cos(bg["angle"]) * (x - 0.5) + np.sin(bg["angle"]) * (y - 0.5)) / 0.71 + 0.5
    elif kind == "radial":
        t = np.clip(np.hypot(x - 0.5, y - 0.5) / 0.71, 0, 1)
    elif kind == "noise":
        noise_rng = np.random.default_rng(bg["noise_seed"])
        cells = bg["noise_cells"]
        m = _upsample_matrix(cells, size).astype(np.float32)
        t = np.clip(m @ noise_rng.random((cells, cells), dtype=np.float32) @ m.T, 0, 1)
    elif kind == "horizon":
        line = bg["horizon"] + bg["tilt"] * (x - 0.5)
        below = np.clip((y - line) * size + 0.5, 0, 1)
        sky = c1 * (0.8 + 0.3 * np.clip(line - y, 0, 1)[..., None])  # sky lightens upward
        ground = c2 * (0.75 + 0.35 * np.clip(y - line, 0, 1)[..., None])
        return np.clip(sky * (1 - below[..., None]) + ground * below[..., None], 0, 1)
    else:
        raise ValueError(f"unknown background {kind!r}")
    t = np.broadcast_to(t, (size, size))[..., None]
    return c1 + (c2 - c1) * t


def render_scene(scene: dict[str, Any], size: int) -> np.ndarray:
    """Render one scene as a (size, size, 3) uint8 image."""
    img = _background(scene["background"], size)
    for o in scene["objects"]:
        r = o["size"] * size
        cx, cy = o["x"] * size, o["y"] * size
        ext = 1.2 * r + 2  # bounding box half-extent (covers rotated shapes and the soft edge)
        x0, x1 = max(0, int(cx - ext)), min(size, int(np.ceil(cx + ext)))
        y0, y1 = max(0, int(cy - ext)), min(size, int(np.ceil(cy + ext)))
        if x1 <= x0 or y1 <= y0:
            continue
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        cos, sin = np.float32(np.cos(o["rotation"])), np.float32(np.sin(o["rotation"]))
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        alpha = np.clip(0.5 - _shape_distance(o["category"], u, v, r, o["aspect"]), 0, 1)[..., None]
        t = _texture(o["texture"], u, v, r, o["texture_period"], o["texture_angle"])[..., None]
        color = np.asarray(o["rgb"], np.float32) * (1 - t) + np.asarray(o["rgb2"], np.float32) * t
        patch = img[y0:y1, x0:x1]
        patch += (color - patch) * alpha
    img *= 255
    img += 0.5
    if scene.get("grain_seed") is not None:  # a little sensor grain so no region is perfectly flat
        grain = np.random.default_rng(scene["grain_seed"]).standard_normal((size, size, 1), dtype=np.float32)
        img += grain * np.float32(3.0)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def sample_scenes(seed: int, indices: np.ndarray | range) -> list[dict[str, Any]]:
    """Attributes of the scenes with the given image indices (cheap: nothing is rendered)."""
    return [sample_scene(np.random.default_rng([seed, STIMULUS_STREAM, int(i)])) for i in indices]


def render_scenes(scenes: list[dict[str, Any]], size: int) -> np.ndarray:
    """Render scenes into one (n, size, size, 3) uint8 array."""
    images = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    for k, scene in enumerate(scenes):
        images[k] = render_scene(scene, size)
    return images


def generate_scenes(seed: int, indices: np.ndarray | range, size: int
                    ) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    """Images (n, size, size, 3) uint8, attribute dicts and captions for the given image indices."""
    scenes = sample_scenes(seed, indices)
    return render_scenes(scenes, size), scenes, [caption(s) for s in scenes]


# --------------------------------------------------------------------------------------------
# attribute vector (input of the high-level encoding model; also a handy decoding target)
# --------------------------------------------------------------------------------------------
def attribute_names() -> list[str]:
    return ([f"category:{c}" for c in CATEGORIES] + [f"color:{c}" for c in COLORS]
            + [f"texture:{t}" for t in TEXTURES] + [f"background:{b}" for b in BACKGROUNDS]
            + ["background:r", "background:g", "background:b", "background:luminance"]
            + [f"n_objects:{n}" for n in (1, 2, 3)]
            + ["size:largest", "size:total_area", "position:x", "position:y", "position:eccentricity"]
            + [f"occupancy:{r}{c}" for r in "tmb" for c in "lcr"])


def attribute_vector(scene: dict[str, Any]) -> np.ndarray:
    """Fixed-length summary of a scene (see :func:`attribute_names`), object terms weighted by area."""
    objs = scene["objects"]
    area = np.array([o["size"] ** 2 for o in objs])
    w = area / area.sum()
    cat, col, tex = np.zeros(len(CATEGORIES)), np.zeros(len(COLORS)), np.zeros(len(TEXTURES))
    occ = np.zeros((3, 3))
    for o, wi in zip(objs, w):
        cat[CATEGORIES.index(o["category"])] += wi
        col[COLORS.index(o["color"])] += wi
        tex[TEXTURES.index(o["texture"])] += wi
        occ[min(2, int(o["y"] * 3)), min(2, int(o["x"] * 3))] += o["size"] ** 2 * np.pi
    bg = scene["background"]
    bg_type = np.array([bg["type"] == b for b in BACKGROUNDS], float)
    bg_rgb = (np.asarray(bg["rgb"]) + np.asarray(bg["rgb2"])) / 2 if bg["type"] != "solid" else np.asarray(bg["rgb"])
    x, y = float(w @ [o["x"] for o in objs]), float(w @ [o["y"] for o in objs])
    n_obj = np.array([len(objs) == n for n in (1, 2, 3)], float)
    sizes = [max(o["size"] for o in objs) / 0.3, float(area.sum() * np.pi * 4)]
    position = [x, y, float(np.hypot(x - 0.5, y - 0.5)) * 2]
    return np.concatenate([cat, col, tex, bg_type, bg_rgb, [bg_rgb @ [0.299, 0.587, 0.114]], n_obj, sizes,
                           position, np.minimum(occ.ravel() * 4, 1.5)]).astype(np.float32)
