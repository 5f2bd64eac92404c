"""Benchmark configurations built from bundles: `engine.load(...)` + `Session.run(input)`.

A configuration spec on the command line is `PATH[:key=value[,key=value...]]`, the keys being
`engine.load` keyword arguments (backend, threads, max_batch, device, ...) plus `name` (the label in
reports). Example: `zoo.slicert:backend=onnxruntime,threads=1`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import BundleError, InputError

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_HW = (1024, 1024)
MAX_CINE_FRAMES = 256  # frames of a cine held decoded in memory for --input


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def _load_parameters() -> set[str]:
    import engine

    return {p for p in inspect.signature(engine.load).parameters if p != "path"}


def parse_config_spec(text: str) -> tuple[Path, dict[str, Any], str | None]:
    """'PATH[:k=v,...]' -> (bundle path, engine.load kwargs, display name or None)."""
    path_part, opts = text, ""
    # The options suffix starts at the last ':' followed by 'key=' (so paths with ':' keep working).
    if ":" in text:
        head, tail = text.rsplit(":", 1)
        if "=" in tail:
            path_part, opts = head, tail
    kwargs: dict[str, Any] = {}
    name = None
    for item in filter(None, (s.strip() for s in opts.split(","))):
        if "=" not in item:
            raise InputError(f"configuration {text!r}: option {item!r} is not key=value")
        k, v = (s.strip() for s in item.split("=", 1))
        if k == "name":
            name = v
        else:
            kwargs[k] = _coerce(v)
    return Path(path_part), kwargs, name


def check_bundle_path(path: Path) -> None:
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist")
    if not path.is_file():
        raise BundleError(f"bundle {path} is not a file")
    if not os.access(path, os.R_OK):
        raise BundleError(f"bundle {path} is not readable")


def check_load_kwargs(spec: str, kwargs: dict[str, Any]) -> None:
    allowed = _load_parameters()
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(
            f"configuration {spec!r}: unknown option(s) {unknown}; engine.load accepts "
            f"{sorted(allowed)} (and name=LABEL)"
        )


def synthetic_image(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """Seeded 12-bit test pattern (smooth gradient + noise; never constant, so no kernel shortcut applies)."""
    rng = np.random.default_rng(seed)
    h, w = shape[0], shape[1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 2048 + 1200 * np.sin(xx / max(w, 1) * 6.28) * np.cos(yy / max(h, 1) * 3.14)
    img = base + rng.normal(0, 150, (h, w))
    if len(shape) == 3:  # RGB (H, W, 3), 8-bit like ultrasound cine
        img = np.stack([img * (0.8 + 0.1 * c) for c in range(shape[2])], axis=-1) / 16
        return np.clip(img, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 4095).astype(dtype)


def parse_input(text: str, *, in_channels: int = 1) -> tuple[Any, dict[str, Any]]:
    """`synthetic`, `synthetic:HxW`, a .npy file (raw pixels) or a DICOM file -> (input, meta).

    For a multi-frame DICOM the input is a list of pre-decoded engine.dicom Slices (one per call, cycled)."""
    if text == SYNTHETIC or text.startswith(SYNTHETIC + ":"):
        hw = DEFAULT_SYNTHETIC_HW
        if ":" in text:
            try:
                hw = tuple(int(v) for v in text.split(":", 1)[1].lower().split("x"))
            except ValueError:
                hw = ()
            if len(hw) != 2 or min(hw) < 1:
                raise InputError(
                    f"--input {text!r}: expected synthetic:HEIGHTxWIDTH, e.g. synthetic:2048x2048"
                )
        shape = (*hw, 3) if in_channels == 3 else hw
        img = synthetic_image(shape)
        return img, {
            "input": "synthetic (seeded 12-bit test pattern, not a real image)",
            "input_shape": list(img.shape),
            "input_dtype": str(img.dtype),
        }
    p = Path(text)
    if not p.is_file():
        raise InputError(f"--input {text!r}: no such file (give a DICOM file, a .npy array or 'synthetic')")
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        return arr, {
            "input": f"raw array {p.name}",
            "input_shape": list(arr.shape),
            "input_dtype": str(arr.dtype),
        }
    import engine.dicom

    img = engine.dicom.read(str(p))
    if not hasattr(img, "pixels") and len(img) > 1:
        # A cine: frames reach a scanner's pipeline in memory, so they are decoded once here and each timed
        # call runs one frame (cycled), i.e. per-frame latency without decoding.
        count = min(len(img), MAX_CINE_FRAMES)
        frames = [img[i] for i in range(count)]
        for f in frames:
            _ = f.pixels
        return frames, {
            "input": f"DICOM cine {p.name}: {count} of {len(img)} frames decoded before timing, one "
            f"frame per call (cycled)",
            "frames": count,
            "input_shape": list(frames[0].pixels.shape),
        }
    # A single-frame DICOM goes to Session.run as a path, so decoding is part of every timed call.
    return str(p), {"input": f"DICOM file {p.name} (decoded on every call)", "input_bytes": p.stat().st_size}


class SessionConfig:
    """`engine.load(bundle, **load_kwargs)`, then `Session.run(input)` per step (stages from timings_ms)."""

    def __init__(
        self,
        name: str,
        bundle: Path,
        input: Any = None,
        *,
        inputs: Any = None,
        load_kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        batch: int = 1,
    ):
        from engine.bench.runner import InputCycle

        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be an integer >= 1, got {batch!r}")
        self.name = name
        self.bundle = Path(bundle)
        self._inputs = InputCycle(input, inputs)
        self.load_kwargs = dict(load_kwargs or {})
        if batch > 1:
            self.load_kwargs.setdefault("max_batch", batch)
        self.batch = batch
        self.items_per_call = batch
        self.meta: dict[str, Any] = {
            "bundle": self.bundle.name,
            "load_kwargs": self.load_kwargs,
            **(meta or {}),
        }
        self.session: Any = None
        self.last_result: Any = None

    def load(self) -> None:
        import engine

        self.session = engine.load(self.bundle, **self.load_kwargs)
        info = getattr(self.session, "info", None)
        if isinstance(info, dict):
            self.meta["session_info"] = {
                k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None), list))
            }
            if isinstance(info.get("trust"), dict):
                self.meta["session_info"]["trust"] = dict(info["trust"])

    def step(self) -> dict[str, int]:
        if self.batch == 1:
            r = self.session.run(self._inputs.next())
        else:
            # run_batch: every Result of a batch carries the whole batch's stage times.
            r = self.session.run_batch([self._inputs.next() for _ in range(self.batch)])[0]
        self.last_result = r
        if getattr(r, "flagged", False):  # trust flags (docs/trust.md) go into the report with the timings
            self.meta["flagged_results"] = self.meta.get("flagged_results", 0) + 1
            self.meta["flags"] = r.flags
        # The session's own "total" is dropped: the runner's wall clock around run() is the total, and
        # "other" then shows what Session.run costs beyond its stages.
        return {k: round(v * 1e6) for k, v in r.timings_ms.items() if k != "total" and v is not None}

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
