"""The input spec of a user's model: task, class names and how a DICOM image becomes its input tensor.

A spec file is a small JSON object; CLI flags override its fields. Every field is checked, and a bad
one raises SpecError naming the file (or "command line") and the field:

    {
      "name": "ct-organs",                              optional, default: the spec file's stem
      "task": "segmentation",                           "classification" | "segmentation"
      "labels": ["background", "lung", "heart"],        class names, index = class id (>= 2)
      "input": {"height": 64, "width": 64, "channels": 1},   the model's input tensor (N, C, H, W)
      "voi": {"policy": "model", "center": -150, "width": 1100},
                                                        "model": this fixed window (modality units, HU
                                                        for CT) for every image; "dicom": each file's
                                                        own window / VOI LUT (PS3.3 C.11.2)
      "output_range": [0.0, 1.0],                       VOI output range
      "normalize": {"mean": [0.5], "std": [0.25]},      optional (x - mean) / std after resizing
      "resize": "area",                                 area | bilinear | nearest
      "modalities": ["CT"],                             optional: the modalities the model takes
      "source_size": [512, 512],                        optional: the one image size it takes
      "preprocess": {...}                               optional: engine.spec.PreprocessSpec fields,
                                                        applied last (full control)
    }

The result, ModelSpec, carries the engine PreprocessSpec the runtime will use (the same object is
written into model.json and the bundle), so training, calibration and the device all preprocess
with one spec.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.errors import SpecError

TASKS = ("classification", "segmentation")
_KEYS = {"name", "task", "labels", "input", "voi", "output_range", "normalize", "resize", "modalities",
         "source_size", "preprocess"}


@dataclass(frozen=True)
class ModelSpec:
    """What a model takes and gives. `preprocess` is the engine spec of its input tensor."""

    name: str
    task: str
    labels: tuple[str, ...]
    preprocess: Any  # engine.spec.PreprocessSpec
    voi_policy: str
    modalities: tuple[str, ...] | None = None
    source_size: tuple[int, int] | None = None
    where: str = "spec"

    @property
    def chw(self) -> tuple[int, int, int]:
        p = self.preprocess
        return (p.out_channels, p.out_height, p.out_width)

    def to_dict(self) -> dict[str, Any]:
        """JSON form that from_dict reads back to an equal spec (the `preprocess` block is complete)."""
        out: dict[str, Any] = {"name": self.name, "task": self.task, "labels": list(self.labels),
                               "voi": {"policy": self.voi_policy}, "preprocess": self.preprocess.to_dict()}
        if self.modalities:
            out["modalities"] = list(self.modalities)
        if self.source_size:
            out["source_size"] = list(self.source_size)
        return out


def _num(v: Any, where: str, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"{where}: {field} must be a number, got {v!r}")
    return float(v)


def _int(v: Any, where: str, field: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SpecError(f"{where}: {field} must be an integer >= {lo}, got {v!r}")
    return v


def _nums(v: Any, where: str, field: str) -> list[float]:
    if not isinstance(v, list) or not v:
        raise SpecError(f"{where}: {field} must be a non-empty list of numbers, got {v!r}")
    return [_num(x, where, field) for x in v]


def from_dict(data: Any, where: str = "spec") -> ModelSpec:
    """Validate a spec object (see the module docstring); SpecError names `where` and the field."""
    from engine.errors import InputError
    from engine.spec import PreprocessSpec

    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; known: {sorted(_KEYS)}")
    task = data.get("task")
    if task not in TASKS:
        raise SpecError(f"{where}: task must be one of {TASKS}, got {task!r}")
    labels = data.get("labels")
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(x, str) and x.strip() for x in labels)):
        raise SpecError(f"{where}: labels must list at least 2 non-empty class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise SpecError(f"{where}: labels must be unique, got {labels}")
    name = data.get("name", Path(where).stem if where.endswith(".json") else "model")
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"{where}: name must be a non-empty string, got {name!r}")

    fields: dict[str, Any] = {"resize": "area", "normalize": "none"}
    inp = data.get("input")
    pre = data.get("preprocess")
    if inp is None and not (isinstance(pre, dict) and "out_height" in pre):
        raise SpecError(f"{where}: missing 'input' ({{\"height\": H, \"width\": W, \"channels\": C}})")
    if inp is not None:
        if not isinstance(inp, dict) or set(inp) - {"height", "width", "channels"}:
            raise SpecError(f"{where}: input must be {{\"height\": H, \"width\": W, \"channels\": 1|3}}, got {inp!r}")
        fields["out_height"] = _int(inp.get("height"), where, "input.height")
        fields["out_width"] = _int(inp.get("width"), where, "input.width")
        channels = inp.get("channels", 1)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise SpecError(f"{where}: input.channels must be 1 or 3, got {channels!r}")
        fields["out_channels"] = channels

    voi = data.get("voi", {"policy": "dicom"})
    if not isinstance(voi, dict) or set(voi) - {"policy", "center", "width", "function"}:
        raise SpecError(f"{where}: voi must be {{\"policy\": \"dicom\"|\"model\", \"center\": C, \"width\": W}}, "
                        f"got {voi!r}")
    policy = voi.get("policy", "model" if "center" in voi else "dicom")
    if policy not in ("dicom", "model"):
        raise SpecError(f"{where}: voi.policy must be 'dicom' or 'model', got {policy!r}")
    if policy == "model" and isinstance(pre, dict) and "window_center" in pre and "center" not in voi:
        pass  # a complete preprocess block (what to_dict writes) carries the window itself
    elif policy == "model":
        if "center" not in voi or "width" not in voi:
            raise SpecError(f"{where}: voi.policy 'model' needs voi.center and voi.width (modality units, HU for CT)")
        fields.update(voi_function=voi.get("function", "linear"), window_center=_num(voi["center"], where, "voi.center"),
                      window_width=_num(voi["width"], where, "voi.width"))
    elif "center" in voi or "width" in voi:
        raise SpecError(f"{where}: voi.center/width given with policy 'dicom' (each file's own window is used); "
                        f"set policy 'model' to use a fixed window")

    if "output_range" in data:
        vals = _nums(data["output_range"], where, "output_range")
        if len(vals) != 2 or not vals[1] > vals[0]:
            raise SpecError(f"{where}: output_range must be [min, max] with max > min, got {data['output_range']!r}")
        fields.update(output_min=vals[0], output_max=vals[1])
    if "normalize" in data:
        norm = data["normalize"]
        if norm in (None, "none"):
            pass
        elif isinstance(norm, dict) and set(norm) == {"mean", "std"}:
            fields.update(normalize="fixed", mean=tuple(_nums(norm["mean"], where, "normalize.mean")),
                          std=tuple(_nums(norm["std"], where, "normalize.std")))
        else:
            raise SpecError(f"{where}: normalize must be \"none\" or {{\"mean\": [...], \"std\": [...]}}, got {norm!r}")
    if "resize" in data:
        fields["resize"] = data["resize"]

    modalities = data.get("modalities")
    if modalities is not None:
        if not isinstance(modalities, list) or not modalities or not all(isinstance(m, str) and m for m in modalities):
            raise SpecError(f"{where}: modalities must be a non-empty list of DICOM Modality codes, got {modalities!r}")
        modalities = tuple(m.upper() for m in modalities)
    size = data.get("source_size")
    if size is not None:
        if not isinstance(size, list) or len(size) != 2:
            raise SpecError(f"{where}: source_size must be [rows, columns], got {size!r}")
        size = (_int(size[0], where, "source_size[0]"), _int(size[1], where, "source_size[1]"))

    if pre is not None:
        if not isinstance(pre, dict):
            raise SpecError(f"{where}: preprocess must be an object of engine PreprocessSpec fields")
        fields.update(pre)
    try:
        spec = PreprocessSpec.from_dict(fields)
    except InputError as exc:
        raise SpecError(f"{where}: {exc}") from None
    if spec.layout != "NCHW" or spec.out_dtype != "float32":
        raise SpecError(f"{where}: the toolchain trains NCHW float32 models, got layout {spec.layout} "
                        f"dtype {spec.out_dtype}")
    if task == "segmentation" and (spec.roi is not None or spec.letterbox):
        raise SpecError(f"{where}: segmentation specs take whole-image resizes only (no roi, no letterbox): "
                        f"masks are resampled onto the model grid the same way")
    return ModelSpec(name=name.strip(), task=task, labels=tuple(labels), preprocess=spec, voi_policy=policy,
                     modalities=modalities, source_size=size, where=where)


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """Read a spec file (or none: flags only) and apply `overrides` (top-level fields; "input"/"voi"
    are merged key by key). SpecError names the file and the field."""
    data: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecError(f"{p}: spec file not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SpecError(f"{p}: not a readable JSON spec ({exc})") from None
        if not isinstance(data, dict):
            raise SpecError(f"{p}: expected a JSON object, got {type(data).__name__}")
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k in ("input", "voi") and isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return from_dict(data, where)


def overrides_from_flags(*, task: str | None = None, classes: str | None = None, size: str | None = None,
                         channels: int | None = None, window: str | None = None, voi: str | None = None,
                         name: str | None = None) -> dict[str, Any]:
    """CLI flags -> spec overrides: --classes a,b,c  --size 64x64  --window C,W  --voi dicom|model."""
    out: dict[str, Any] = {"task": task, "name": name}
    if classes is not None:
        out["labels"] = [c.strip() for c in classes.split(",")]
    inp: dict[str, Any] = {}
    if size is not None:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise SpecError(f"command line: --size must be HEIGHTxWIDTH (e.g. 64x64), got {size!r}") from None
        inp.update(height=h, width=w)
    if channels is not None:
        inp["channels"] = channels
    out["input"] = inp or None
    v: dict[str, Any] = {}
    if window is not None:
        try:
            c, w = (float(x) for x in window.split(","))
        except ValueError:
            raise SpecError(f"command line: --window must be CENTER,WIDTH (e.g. -150,1100), got {window!r}") from None
        v.update(policy="model", center=c, width=w)
    if voi is not None:
        v["policy"] = voi
    out["voi"] = v or None
    return out
