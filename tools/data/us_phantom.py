"""Synthetic ultrasound speckle phantom with hypoechoic structures and their masks (fully simulated).

Per image (B-mode, sector/phased-array geometry):
- echogenicity map: background tissue with smooth large-scale variation, a brighter superficial
  layer, anechoic cysts (round/elliptic, posterior acoustic enhancement) and hypoechoic lesions
  (irregular outline, mild posterior shadowing);
- speckle: complex Gaussian scatterers scaled by sqrt(echogenicity), blurred by a Gaussian PSF
  (axial and lateral), envelope |.| -> Rayleigh-distributed speckle;
- depth attenuation exp(-2 alpha f r) partly compensated by an imperfect TGC;
- log compression to a random dynamic range and gain, then scan conversion of the (depth, angle)
  grid to a Cartesian image (zero outside the sector), stored as uint8.
Masks are rasterized from the same analytic shapes on the Cartesian grid (inside the sector only).
"""
from __future__ import annotations

import math

import numpy as np

NAME = "us_phantom"
VERSION = 1
TASK = "segmentation"
LABELS = ("background", "cyst", "lesion")
IMAGE_PX = 256  # stored image side; the model sees it area-resized to 96
N_DEPTH, N_BEAMS = 320, 128  # polar (axial, lateral) sampling before scan conversion
SPLITS_FULL = {"train": 320, "val": 80, "calib": 256, "test": 160}
SPLITS_FAST = {"train": 96, "val": 32, "calib": 256, "test": 64}


def spec():
    """96x96 input (the structures are >= 5 mm in a <= 160 mm field, i.e. >= 3 pixels); the VOI
    window maps the full 8-bit range to [0, 1] exactly as the DICOM default for an unwindowed 8-bit
    ultrasound frame does, so voi_policy "dicom" feeds the model the same numbers."""
    from engine.spec import PreprocessSpec

    return PreprocessSpec(out_height=96, out_width=96, voi_function="linear", window_center=128.0,
                          window_width=256.0, output_min=0.0, output_max=1.0, resize="area",
                          normalize="none")


# calib = 256 in both modes: the quantizer (slicert quantize) needs >= 256 calibration slices.
def params(fast: bool, seed: int) -> dict:
    return {"sizes": dict(SPLITS_FAST if fast else SPLITS_FULL), "image_px": IMAGE_PX,
            "n_depth": N_DEPTH, "n_beams": N_BEAMS, "depth_mm": [70.0, 140.0], "sector_deg": [60.0, 85.0],
            "cysts": [0, 3], "lesions": [0, 2], "cyst_radius_mm": [3.0, 12.0], "lesion_radius_mm": [4.0, 14.0],
            "cyst_echo": [0.001, 0.01], "lesion_echo": [0.06, 0.3], "atten_db_cm_mhz": [0.3, 0.7],
            "freq_mhz": [2.5, 5.0], "tgc_fraction": [0.6, 0.95], "dynamic_range_db": [45.0, 60.0],
            "gain_db": [-6.0, 6.0]}


def _blur(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect")
    out = np.zeros_like(x)
    n = x.shape[axis]
    for i, w in enumerate(k):
        out += w * np.take(xp, np.arange(i, i + n), axis=axis)
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth random texture: Gaussian noise on a coarse grid, bilinearly upsampled (cheap)."""
    h, w = shape
    gh, gw = h // cell + 2, w // cell + 2
    g = rng.normal(size=(gh, gw))
    fy = np.arange(h) / cell
    fx = np.arange(w) / cell
    iy, ix = fy.astype(int), fx.astype(int)
    wy, wx = (fy - iy)[:, None], (fx - ix)[None, :]
    return ((1 - wy) * (1 - wx) * g[iy][:, ix] + (1 - wy) * wx * g[iy][:, ix + 1]
            + wy * (1 - wx) * g[iy + 1][:, ix] + wy * wx * g[iy + 1][:, ix + 1])


def _shapes(rng: np.random.Generator, p: dict, depth: float, half_angle: float) -> list[dict]:
    """Non-overlapping structures inside the sector (Cartesian mm, apex at the origin, y = depth)."""
    shapes: list[dict] = []
    n_cyst = int(rng.integers(p["cysts"][0], p["cysts"][1] + 1))
    n_les = int(rng.integers(p["lesions"][0], p["lesions"][1] + 1))
    kinds = [1] * n_cyst + [2] * n_les
    for kind in kinds:
        lo, hi = p["cyst_radius_mm"] if kind == 1 else p["lesion_radius_mm"]
        for _ in range(30):  # rejection sampling; a structure that never fits is skipped
            a = rng.uniform(lo, hi)
            b = a * rng.uniform(0.6, 1.0)
            r = rng.uniform(0.15 * depth + a, 0.92 * depth - a)
            th = rng.uniform(-half_angle, half_angle) * 0.8
            cx, cy = r * math.sin(th), r * math.cos(th)
            # Keep the whole shape inside the sector (angular margin) and apart from the others.
            if abs(th) + math.asin(min(1.0, a / r)) > half_angle * 0.95:
                continue
            if any(math.hypot(cx - s["cx"], cy - s["cy"]) < a + s["a"] + 2.0 for s in shapes):
                continue
            shape = {"kind": kind, "cx": cx, "cy": cy, "a": a, "b": b, "rot": rng.uniform(0, math.pi),
                     "echo": rng.uniform(*(p["cyst_echo"] if kind == 1 else p["lesion_echo"])),
                     # Irregular lesion outline: radius modulated by low-order harmonics.
                     "harm": rng.uniform(-0.12, 0.12, size=(3, 2)) if kind == 2 else np.zeros((3, 2))}
            shapes.append(shape)
            break
    return shapes


def _inside(s: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx, dy = x - s["cx"], y - s["cy"]
    out = np.zeros(x.shape, bool)
    # Only points within the largest possible radius need the (costly) angular outline test.
    r_max = s["a"] * (1.0 + np.abs(s["harm"]).sum())
    near = dx * dx + dy * dy <= r_max * r_max
    dx, dy = dx[near], dy[near]
    c, sn = math.cos(s["rot"]), math.sin(s["rot"])
    u, v = c * dx + sn * dy, -sn * dx + c * dy
    ang = np.arctan2(v / s["b"], u / s["a"])
    scale = 1.0
    for k, (ca, sa) in enumerate(s["harm"], start=2):
        scale = scale + ca * np.cos(k * ang) + sa * np.sin(k * ang)
    out[near] = (u / s["a"]) ** 2 + (v / s["b"]) ** 2 <= scale ** 2
    return out


def render(rng: np.random.Generator, p: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """One (image uint8 (H, W), mask uint8 (H, W), meta) sample."""
    n_r, n_b, px = p["n_depth"], p["n_beams"], p["image_px"]
    depth = rng.uniform(*p["depth_mm"])
    half = math.radians(rng.uniform(*p["sector_deg"])) / 2
    shapes = _shapes(rng, p, depth, half)
    # Polar grid (depth r, steering angle th) -> Cartesian positions of every sample.
    r = (np.arange(n_r) + 0.5) / n_r * depth
    th = (np.arange(n_b) + 0.5) / n_b * 2 * half - half
    rr, tt = np.meshgrid(r, th, indexing="ij")
    x, y = rr * np.sin(tt), rr * np.cos(tt)
    # Tissue echogenicity: smooth background texture and a brighter superficial layer.
    bg = _smooth_noise(rng, (n_r, n_b), 16)
    echo = np.exp(0.35 * bg / (bg.std() + 1e-9))
    layer_depth = rng.uniform(0.05, 0.15) * depth
    echo *= 1.0 + 1.2 * np.exp(-0.5 * ((rr - layer_depth) / (0.02 * depth)) ** 2)
    for s in shapes:
        inside = _inside(s, x, y)
        echo[inside] = s["echo"]
        # Along each beam, tissue deeper than the structure is enhanced (cyst: little attenuation)
        # or shadowed (solid lesion): cumulative "inside" along depth marks the shadow column.
        behind = (np.cumsum(inside, axis=0) > 0) & ~inside
        echo[behind] *= 1.35 if s["kind"] == 1 else 0.8
    # Rayleigh speckle: complex Gaussian scatterers, PSF blur axially (fine) and laterally (wider).
    scat = (rng.normal(size=(n_r, n_b)) + 1j * rng.normal(size=(n_r, n_b))) * np.sqrt(echo)
    field = _blur(_blur(scat, 1.2, 0), 0.9, 1)
    env = np.abs(field)
    # Depth attenuation (two-way) and imperfect time-gain compensation.
    alpha = rng.uniform(*p["atten_db_cm_mhz"]) * rng.uniform(*p["freq_mhz"])  # dB/cm
    loss_db = 2 * alpha * rr / 10.0
    env *= 10 ** (-(loss_db * (1 - rng.uniform(*p["tgc_fraction"]))) / 20)
    dr = rng.uniform(*p["dynamic_range_db"])
    db = 20 * np.log10(env / np.percentile(env, 99.5) + 1e-12) + rng.uniform(*p["gain_db"])
    bmode = np.clip((db + dr) / dr, 0.0, 1.0)
    # Scan conversion: Cartesian pixel -> (r, th) -> bilinear in the polar image.
    width = 2 * depth * math.sin(half)
    pix = max(depth, width) / px
    xs = (np.arange(px) + 0.5 - px / 2) * pix
    ys = (np.arange(px) + 0.5) * pix
    X, Y = np.meshgrid(xs, ys)
    R, T = np.hypot(X, Y), np.arctan2(X, Y)
    fr = R / depth * n_r - 0.5
    fb = (T + half) / (2 * half) * n_b - 0.5
    in_sector = (R < depth) & (np.abs(T) < half)
    i0 = np.clip(np.floor(fr).astype(int), 0, n_r - 2)
    j0 = np.clip(np.floor(fb).astype(int), 0, n_b - 2)
    wr = np.clip(fr - i0, 0, 1)
    wb = np.clip(fb - j0, 0, 1)
    img = ((1 - wr) * (1 - wb) * bmode[i0, j0] + (1 - wr) * wb * bmode[i0, j0 + 1]
           + wr * (1 - wb) * bmode[i0 + 1, j0] + wr * wb * bmode[i0 + 1, j0 + 1])
    image = np.where(in_sector, np.rint(img * 255), 0).astype(np.uint8)
    mask = np.zeros((px, px), np.uint8)
    for s in shapes:
        mask[_inside(s, X, Y) & in_sector] = s["kind"]
    meta = {"depth_mm": depth, "sector_deg": math.degrees(2 * half), "pixel_mm": pix,
            "n_cysts": sum(s["kind"] == 1 for s in shapes), "n_lesions": sum(s["kind"] == 2 for s in shapes)}
    return image, mask, meta


_SPLIT_IDS = {"train": 0, "val": 1, "calib": 2, "test": 3}


def build(p: dict, seed: int, progress=None) -> dict:
    out = {}
    total = sum(p["sizes"].values())
    done = 0
    for split, size in p["sizes"].items():
        px = p["image_px"]
        images = np.empty((size, px, px), np.uint8)
        masks = np.empty((size, px, px), np.uint8)
        metas: dict[str, list] = {}
        for i in range(size):
            # Seeded per (seed, split, index): splits never share a generator stream, and image i
            # is identical whatever the split size (--fast data is a prefix of the full data).
            rng = np.random.default_rng([seed, 1000 + _SPLIT_IDS[split], i])
            images[i], masks[i], meta = render(rng, p)
            for k, v in meta.items():
                metas.setdefault(k, []).append(v)
            done += 1
            if progress is not None and done % 50 == 0:
                progress(done / total)
        out[split] = {"images": images, "targets": masks,
                      "meta": {k: np.asarray(v, dtype=np.float64) for k, v in metas.items()}}
    return {
        "splits": out,
        # Pixel size varies with the simulated depth; per-image values are in meta["pixel_mm"].
        "pixel_spacing_mm": None,
        "source_sha256": {},
        "provenance": {
            "real": "nothing",
            "simulated": "everything: speckle phantom (Rayleigh speckle, depth attenuation with imperfect TGC, "
                         "sector scan conversion) with anechoic cysts and hypoechoic lesions and their exact masks",
            "split_rule": "independent random streams per split (seed, split, index)",
            "caveat": "synthetic images only; accuracy here says nothing about real ultrasound; real frames from "
                      "pydicom-data/deid-data are used for runtime and latency, not accuracy",
        },
    }
