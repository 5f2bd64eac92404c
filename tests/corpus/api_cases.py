"""Bad arrays, arguments and preprocessing specs at the public API: Session.run, engine.load,
engine.preprocess, PreprocessSpec.from_dict.

Generated from tables (dtype x ..., field x bad value), not picked one by one. The spec cases are
written as JSON files (NaN/Infinity tokens included: that is what a bundle manifest could carry);
array and argument cases are recipes (tests/corpus/arrays.py).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from tests.corpus.case import ACCEPTED, Case

VALID_NAME = "valid-classifier.slicert"
SIDE = 64  # raw test images are 64 x 64 (the corpus model takes 32 x 32)


def _arr(dtype: str = "uint16", shape: tuple[int, ...] = (SIDE, SIDE), *then: list, seed: int = 1234) -> dict:
    return {"make": "array", "dtype": dtype, "shape": list(shape), "then": [list(t) for t in then], "seed": seed}


def _value(v: Any) -> dict:
    return {"make": "value", "value": v}


def _run(case_id: str, recipe: dict, expect: str, match: str, why: str, native: bool = False, **kwargs) -> Case:
    return Case(id=case_id, group="array", entry="session.run", expect=expect, match=match, why=why, recipe=recipe,
                kwargs=kwargs, native=native)


# -- Session.run with raw arrays ------------------------------------------------------------------------
def array_cases() -> list[Case]:
    cases: list[Case] = []
    for dtype in ("float64", "float16", "int8", "int64", "uint32", "uint64", "bool", "complex64", "object", "<U2",
                  "datetime64[D]", "V4"):
        name = str(np.dtype(dtype))
        cases.append(_run(f"array/dtype-{name}", _arr(dtype), "InputError", rf"dtype {re.escape(name)}",
                          f"{name} pixels (the kernel takes uint8/uint16/int16/int32/float32)"))
    for dtype in (">u2", ">i2", ">f4", ">i4"):
        cases.append(_run(f"array/byte-order-{dtype}", _arr(dtype[1:].replace("u2", "uint16").replace("i2", "int16")
                                                               .replace("f4", "float32").replace("i4", "int32"),
                                                               (SIDE, SIDE), ["swap"]),
                          "InputError", r"byte order", f"{dtype}: non-native byte order"))
    for shape, match, why in [
        ((SIDE,), r"shape \(64,\)", "1-D"), ((), r"shape \(\)", "0-D scalar array"),
        ((0, 0), r"empty", "0 x 0"), ((0, SIDE), r"empty", "0 rows"), ((SIDE, 0), r"empty", "0 columns"),
        ((0, SIDE, SIDE), r"empty", "0 frames"),
        ((2, 2, SIDE, SIDE), r"shape \(2, 2, 64, 64\)", "4-D grey"), ((SIDE, SIDE, 2), r"shape|frame", "(H, W, 2)"),
        ((SIDE, SIDE, 4), r"shape|frame", "(H, W, 4) RGBA"), ((SIDE, SIDE, 3), r"RGB", "(H, W, 3) to a grey model"),
        ((3, SIDE, SIDE), r"frame", "3 frames without frame="),
    ]:
        cases.append(_run(f"array/shape-{'x'.join(map(str, shape)) or 'scalar'}", _arr("uint16", shape), "InputError",
                          match, f"{why} input"))
    frames = _arr("uint16", (3, SIDE, SIDE))
    for frame, match in [(3, r"frame 3 is out of range"), (-4, r"frame -4 is out of range"), (True, r"frame"),
                         ("0", r"frame"), (1.5, r"frame")]:
        cases.append(_run(f"array/frame-{frame!r}", frames, "InputError", match, f"frame={frame!r} on 3 frames",
                          frame=frame))
    cases.append(_run("array/frame-on-single-image", _arr(), "InputError", r"frame=1 given", "frame=1 on a 2-D image",
                      frame=1))
    for op, where in [("nan", [0, 0]), ("nan", "last"), ("nan", "center"), ("nan", "all"), ("inf", "center"),
                      ("-inf", [0, SIDE - 1]), ("inf", "all")]:
        label = where if isinstance(where, str) else "-".join(map(str, where))
        cases.append(_run(f"array/float32-{op}-at-{label}", _arr("float32", (SIDE, SIDE), [op, where]), "InputError",
                          r"NaN or Inf", f"float32 image with {op} at {where}", native=True))
    cases.append(_run("array/float32-nan-in-chosen-frame", _arr("float32", (3, SIDE, SIDE), ["nan", [2, 5, 5]]),
                      "InputError", r"NaN or Inf", "NaN in frame 2, frame=2", native=True, frame=2))
    for name, shape, strides in [("rows-past-end", (SIDE, SIDE), (1024, 2)), ("cols-past-end", (SIDE, SIDE), (128, 256)),
                                 ("negative-before-start", (SIDE, SIDE), (-128, 2)),
                                 ("bigger-than-buffer", (4 * SIDE, SIDE), (128, 2))]:
        cases.append(_run(f"array/strides-{name}", _arr("uint16", (SIDE, SIDE), ["strided_out", list(shape),
                                                                                  list(strides)]),
                          "InputError", r"strides", f"as_strided view {shape} strides {strides} outside its buffer"))
    for shape in [(1, 2**31), (2**31, 1), (2**31 + 5, 2**31 + 5)]:
        cases.append(_run(f"array/side-{shape[0]}x{shape[1]}", _arr("uint8", (1, 1), ["broadcast", list(shape)]),
                          "InputError", r"2\^31", f"zero-stride view of {shape[0]} x {shape[1]} pixels", native=True))
    for kind in ("list2d", "dict", "set", "object"):
        cases.append(_run(f"array/not-an-array-{kind}", {"make": "object", "kind": kind}, "InputError",
                          r"cannot run on a", f"a Python {kind} instead of pixels"))
    for v in (None, 42, 3.5):
        cases.append(_run(f"array/not-an-array-{v!r}", _value(v), "InputError", r"cannot run on a", f"{v!r}"))
    cases.append(_run("array/bytes-noise", {"make": "object", "kind": "bytes_noise"}, "DicomError", r"not a DICOM",
                      "256 random bytes (taken as DICOM bytes)"))
    cases.append(_run("array/memoryview-noise", {"make": "object", "kind": "memoryview_noise"}, "DicomError",
                      r"not a DICOM", "a memoryview of random bytes"))
    cases.append(_run("array/path-does-not-exist", _value("/nonexistent/slicert-corpus/image.dcm"), "DicomError",
                      r"nonexistent/slicert-corpus/image\.dcm", "a DICOM path that does not exist"))
    cases.append(_run("array/path-is-a-directory", _value("/"), "DicomError", r"director|'/'",
                      "a directory given as a DICOM path"))
    # a caller-supplied spec that changes what the model was trained on, or does not fit the input
    for name, changes, match in [("out-height", {"out_height": 64}, r"out_height"),
                                 ("layout", {"layout": "NHWC"}, r"layout"),
                                 ("normalize", {"normalize": "none"}, r"normalize"),
                                 ("out-dtype", {"out_dtype": "float16"}, r"out_dtype"),
                                 ("roi-outside", {"roi": (60, 60, 10, 10)}, r"roi"),
                                 ("rgb-for-grey", {"in_channels": 3}, r"in_channels|\(H, W, 3\)")]:
        recipe = _arr()
        cases.append(_run(f"array/spec-{name}", recipe, "InputError", match,
                          f"spec=session.spec.replace({changes})", native=name in ("roi-outside", "rgb-for-grey"),
                          spec={"make": "spec", "spec": changes}))
    # segmenter: the pixel spacing turns pixel counts into mm², so it must be physical
    for spacing, label in [((0.0, 1.0), "zero"), ((-1.0, 1.0), "negative"), ((math.nan, 1.0), "nan"),
                           ((math.inf, 1.0), "inf"), ("abc", "text"), ((1.0,), "one-value"),
                           ((1.0, 2.0, 3.0), "three-values"), ((1e300, 1e300), "overflowing-area"),
                           ((1e-200, 1e-200), "underflowing-area"), ((5e-7, 0.5), "below-1-nm"),
                           ([[0.5, 0.5]], "nested")]:
        cases.append(_run(f"array/segmenter-pixel-spacing-{label}", _arr(), "InputError", r"pixel.spacing",
                          f"segmenter run with pixel_spacing_mm={spacing!r}", session="segmenter",
                          pixel_spacing_mm=spacing))
    cases.append(_run("array/spec-not-a-spec", _arr(), "InputError", r"PreprocessSpec", "spec={} (a dict)",
                      spec={"make": "value", "value": {}}))
    # too small to mean anything for a model: a typed error naming the size and the min_side option
    for name, recipe in [("1x1-uint16", _arr("uint16", (1, 1))), ("1x1-float32", _arr("float32", (1, 1))),
                         ("1x1-int32", _arr("int32", (1, 1))), ("1xN", _arr("uint16", (1, SIDE))),
                         ("Nx1", _arr("uint16", (SIDE, 1))), ("2x2-int16", _arr("int16", (2, 2))),
                         ("15xN", _arr("uint16", (15, SIDE)))]:
        cases.append(_run(f"array/too-small-{name}", recipe, "InputError", r"pixels, below .*min_side=16",
                          f"{name} image: below the session's min_side"))
    # ... unless the caller lowers min_side: then degenerate but valid, finite and identical to the same
    # pixels laid out plainly (the kernel's math is defined for any size >= 1)
    for name, recipe in [("1x1-uint16", _arr("uint16", (1, 1))), ("1x1-float32", _arr("float32", (1, 1))),
                         ("1xN", _arr("uint16", (1, SIDE))), ("Nx1", _arr("uint16", (SIDE, 1))),
                         ("2x2-int16", _arr("int16", (2, 2)))]:
        cases.append(_run(f"array/accepted-min-side-1-{name}", recipe, ACCEPTED, r"",
                          f"{name} image with min_side=1: degenerate but valid", native=True,
                          reference="contiguous", session="min_side_1"))
    for op in ("fortran", "reversed", "transposed", "every_other", "misaligned", "readonly"):
        for dtype in ("uint16", "float32"):
            cases.append(_run(f"array/accepted-{op}-{dtype}", _arr(dtype, (SIDE, SIDE), [op]), ACCEPTED, r"",
                              f"{op} {dtype} layout: valid, must equal the contiguous copy", native=True,
                              reference="contiguous"))
    cases.append(_run("array/accepted-broadcast-constant", _arr("uint16", (1, 1), ["broadcast", [SIDE, SIDE]]),
                      ACCEPTED, r"", "zero-stride constant image", native=True, reference="contiguous"))
    for value in (3.0e38, -3.0e38):
        cases.append(_run(f"array/accepted-float32-{value:g}", _arr("float32", (SIDE, SIDE), ["fill", value]),
                          ACCEPTED, r"", f"float32 image of {value:g} (finite, near the float32 limit)", native=True,
                          reference="contiguous"))
    return cases


# -- engine.preprocess direct -----------------------------------------------------------------------------
def _spec_dict() -> dict[str, Any]:
    from tests.runtime import tiny_models

    return tiny_models.spec().to_dict()


def preprocess_cases() -> list[Case]:
    spec = {"make": "spec", "base": "default", "spec": _spec_dict()}
    x = _arr()
    cases: list[Case] = []

    def into(name: str, out: dict, expect: str, match: str, why: str, **kwargs) -> None:
        cases.append(Case(id=f"preprocess/into-{name}", group="preprocess", entry="preprocess_into", expect=expect,
                          match=match, why=why, recipe=x, kwargs={"out": out, "spec": spec, **kwargs}, native=True))

    good_out = {"dtype": "float32", "shape": [1, 1, 32, 32]}
    into("out-float64", {"dtype": "float64", "shape": [1, 1, 32, 32]}, "InputError", r"output dtype float64",
         "float64 output for a float32 spec")
    into("out-int8", {"dtype": "int8", "shape": [1, 1, 32, 32]}, "InputError", r"output dtype int8",
         "int8 output for a float32 spec")
    into("out-shape-16", {"dtype": "float32", "shape": [1, 1, 16, 16]}, "InputError", r"output shape",
         "16 x 16 output for a 32 x 32 spec")
    into("out-shape-3d", {"dtype": "float32", "shape": [1, 32, 32]}, "InputError", r"output shape", "3-D output")
    into("out-nhwc", {"dtype": "float32", "shape": [1, 32, 32, 1]}, "InputError", r"output shape",
         "NHWC buffer for an NCHW spec")
    into("out-fortran", {"dtype": "float32", "shape": [2, 1, 32, 32], "order": "F"}, "InputError", r"C-contiguous",
         "Fortran-ordered output buffer")
    into("out-readonly", {**good_out, "readonly": True}, "InputError", r"read-only", "read-only output buffer")
    into("out-list", {"list": True}, "InputError", r"out must be", "a list as output buffer")
    into("out-aliases-input", {**good_out, "alias_input": True}, "InputError", r"share memory",
         "input is a view of the output buffer")
    for bi in (1, -1, 2**40):
        into(f"batch-index-{bi}", good_out, "InputError", r"batch_index", f"batch_index={bi} for a batch of 1",
             batch_index=bi)
    into("batch-index-bool", good_out, "InputError", r"batch_index", "batch_index=True", batch_index=True)
    into("batch-index-float", good_out, "InputError", r"batch_index", "batch_index=0.0", batch_index=0.0)
    into("spec-dict", good_out, "InputError", r"PreprocessSpec", "spec given as a dict",
         spec_override={"make": "value", "value": _spec_dict()})

    def poked(name: str, field_values: dict[str, Any], match: str, base: dict | None = None) -> None:
        from tests.corpus.arrays import encode_value

        recipe = {"make": "raw_spec", "spec": base or _spec_dict(),
                  "poke": {k: encode_value(v) for k, v in field_values.items()}}
        cases.append(Case(id=f"preprocess/native-spec-{name}", group="preprocess", entry="preprocess", expect="InputError",
                          match=match, why=f"a PreprocessSpec whose {list(field_values)} was overwritten after "
                                           f"validation: only the native parser checks it",
                          recipe=x, kwargs={"spec": recipe}, native=True))

    poked("out-height-0", {"out_height": 0}, r"out_height")
    poked("out-width-huge", {"out_width": 10**6}, r"out_width|out_height")
    poked("in-channels-2", {"in_channels": 2}, r"in_channels")
    poked("layout-chw", {"layout": "CHW"}, r"layout")
    poked("out-dtype-uint8", {"out_dtype": "uint8"}, r"out_dtype")
    poked("resize-cubic", {"resize": "cubic"}, r"resize")
    poked("voi-function-gamma", {"voi_function": "gamma"}, r"voi_function")
    poked("window-width-nan", {"voi_function": "linear", "window_width": math.nan}, r"window_width")
    poked("window-center-inf", {"window_center": math.inf}, r"window_center")
    poked("window-width-float32-overflow", {"window_width": 1e39}, r"window_width")
    poked("quant-scale-0", {"quant_scale": 0.0}, r"quant_scale")
    poked("rescale-slope-0", {"rescale_slope": 0.0}, r"rescale_slope")
    poked("output-range-empty", {"output_max": 0.0}, r"output_max")
    poked("voi-lut-2d", {"voi_function": "lut", "voi_lut": np.ones((4, 4), np.float32)}, r"voi_lut")
    poked("voi-lut-missing", {"voi_function": "lut", "voi_lut": None}, r"voi_lut")
    poked("modality-lut-nan", {"modality_lut": np.array([0.0, np.nan], np.float32)}, r"modality_lut")
    poked("voi-lut-bits-0", {"voi_lut_bits": 0}, r"voi_lut_bits")
    poked("roi-negative", {"roi": (-1, 0, 10, 10)}, r"roi")
    poked("roi-zero-size", {"roi": (0, 0, 0, 10)}, r"roi")
    poked("roi-three-values", {"roi": (0, 0, 10)}, r"roi")
    poked("mean-empty", {"mean": ()}, r"mean")
    poked("std-zero", {"std": (0.0,)}, r"std")
    poked("quant-zero-point-300", {"out_dtype": "int8", "quant_zero_point": 300}, r"quant_zero_point")
    poked("spec-field-wrong-type", {"window_center": "forty"}, r"window_center")
    poked("first-mapped-beyond-int", {"modality_lut": np.arange(16, dtype=np.float32),
                                      "modality_lut_first_mapped": 10**30}, r"modality_lut_first_mapped")
    poked("roi-beyond-int64", {"roi": (10**30, 0, 10, 10)}, r"roi")
    # valid Python specs that do not fit the image (or that only the kernel can judge)
    for name, changes, recipe, match in [
        ("roi-past-image", {"roi": [32, 32, 64, 64]}, x, r"roi"),
        ("rgb-spec-grey-input", {"in_channels": 3}, x, r"\(H, W, 3\)|in_channels"),
        ("equalize-rgb", {"in_channels": 3, "out_channels": 3, "equalize": True},
         _arr("uint8", (SIDE, SIDE, 3)), r"equaliz"),
        ("voi-lut-first-mapped-huge", {"voi_function": "lut", "voi_lut": [0.0, 1.0, 2.0],
                                       "voi_lut_first_mapped": 10**30}, x, r"voi_lut_first_mapped"),
        ("roi-huge-ints", {"roi": [10**30, 10**30, 10**30, 10**30]}, x, r"roi"),
    ]:
        spec_changes = {**_spec_dict(), **changes}
        cases.append(Case(id=f"preprocess/spec-{name}", group="preprocess", entry="preprocess", expect="InputError",
                          match=match, why=f"spec {changes} on a {recipe['shape']} image",
                          recipe=recipe, kwargs={"spec": {"make": "spec", "base": "default", "spec": spec_changes}},
                          native=True))
    # float16 output holds at most 65504: a pass-through (no VOI) of 16-bit detector values must saturate
    # or be refused, never feed inf to the model
    for name, changes, recipe in [
        ("float16-no-voi-uint16-max", {"out_dtype": "float16", "voi_function": "none", "normalize": "none"},
         _arr("uint16", (SIDE, SIDE), ["fill", 65535])),
        ("float16-no-voi-int32-large", {"out_dtype": "float16", "voi_function": "none", "normalize": "none"},
         _arr("int32", (SIDE, SIDE), ["fill", 1_505_919_583])),
        ("float16-rescale-overflow", {"out_dtype": "float16", "voi_function": "none", "normalize": "none",
                                      "rescale_slope": 1000.0}, _arr("uint16", (SIDE, SIDE), ["fill", 4095])),
    ]:
        cases.append(Case(id=f"preprocess/spec-{name}", group="preprocess", entry="preprocess", expect="InputError",
                          match=r"float16|65504|range", why=f"spec {changes}: values beyond float16 (refuse, or "
                                                             f"saturate to a finite value)",
                          recipe=recipe, kwargs={"spec": {"make": "spec", "base": "default",
                                                          "spec": {**_spec_dict(), **changes}},
                                                 "finite_result_ok": True}, native=True))
    for n in (0, -1, 257, "2", True, 2.5, None):
        cases.append(Case(id=f"preprocess/set-num-threads-{n!r}", group="preprocess", entry="set_num_threads",
                          expect="InputError", match=r"n must|set_num_threads", why=f"set_num_threads({n!r})",
                          recipe=_value(n), native=True))
    return cases


# -- engine.postprocess direct ---------------------------------------------------------------------------
def postprocess_cases() -> list[Case]:
    spec = {"make": "spec", "base": "default", "spec": _spec_dict()}
    cases: list[Case] = []

    def add(name: str, fn: str, recipe: dict, expect: str, match: str, why: str, **kwargs) -> None:
        cases.append(Case(id=f"postprocess/{fn}-{name}", group="postprocess", entry="postprocess", expect=expect,
                          match=match, why=why, recipe=recipe, kwargs={"fn": fn, **kwargs}, native=True))

    logits = _arr("float32", (3, 32, 32))
    add("2d-logits", "argmax_mask", _arr("float32", (32, 32)), "InputError", r"\(K, H, W\)", "(H, W) logits")
    add("batch-of-2", "argmax_mask", _arr("float32", (2, 3, 32, 32)), "InputError", r"batch of 2",
        "a batch of 2 logit maps")
    add("300-classes", "argmax_mask", _arr("float32", (300, 4, 4)), "InputError", r"class|255|256|uint8",
        "300 classes cannot be stored in a uint8 mask")
    add("empty-classes", "argmax_mask", _arr("float32", (0, 32, 32)), "InputError", r"empty|class|shape",
        "zero classes")
    add("complex-logits", "argmax_mask", _arr("complex64", (3, 8, 8)), "InputError", r"dtype|numeric",
        "complex logits")
    add("out-wrong-shape", "argmax_mask", logits, "InputError", r"out|shape", "out buffer 16 x 16 for 32 x 32 logits",
        out={"dtype": "uint8", "shape": [16, 16]})
    add("out-wrong-dtype", "argmax_mask", logits, "InputError", r"out|dtype|uint8", "float32 out buffer",
        out={"dtype": "float32", "shape": [32, 32]})
    add("out-readonly", "argmax_mask", logits, "InputError", r"read-only|writ", "read-only out buffer",
        out={"dtype": "uint8", "shape": [32, 32], "readonly": True})
    add("nan-logits", "argmax_mask", _arr("float32", (3, 8, 8), ["nan", "all"]), ACCEPTED, r"",
        "all-NaN logits: documented as 'a NaN logit never wins' (mask of class 0)")
    mask = _arr("uint8", (32, 32))
    add("src-zero-rows", "mask_to_source", mask, "InputError", r"source size", "src_hw (0, 64)", src_hw=[0, 64],
        spec=spec)
    add("src-negative", "mask_to_source", mask, "InputError", r"source size", "src_hw (-5, 64)", src_hw=[-5, 64],
        spec=spec)
    add("mask-int16-negative", "mask_to_source", _arr("int16", (32, 32), ["fill", -3]), "InputError",
        r"class indices", "a mask of -3", src_hw=[64, 64], spec=spec)
    add("mask-float", "mask_to_source", _arr("float32", (32, 32)), "InputError", r"class indices|dtype",
        "a float mask", src_hw=[64, 64], spec=spec)
    add("mask-3d", "mask_to_source", _arr("uint8", (3, 32, 32)), "InputError", r"mask|shape|2-D", "a 3-D mask",
        src_hw=[64, 64], spec=spec)
    add("out-wrong-shape", "mask_to_source", mask, "InputError", r"out has shape", "out 32 x 32 for a 64 x 64 source",
        src_hw=[64, 64], spec=spec, out={"dtype": "uint8", "shape": [32, 32]})
    add("out-wrong-dtype", "mask_to_source", mask, "InputError", r"out|dtype|uint8", "float32 out",
        src_hw=[64, 64], spec=spec, out={"dtype": "float32", "shape": [64, 64]})
    add("roi-outside-source", "mask_to_source", mask, "InputError", r"roi", "spec ROI beyond the 16 x 16 source",
        src_hw=[16, 16], spec={"make": "spec", "base": "default", "spec": {**_spec_dict(), "roi": [0, 0, 40, 40]}})
    add("spec-not-a-spec", "mask_to_source", mask, "InputError", r"PreprocessSpec", "spec given as a dict",
        src_hw=[64, 64], spec={"make": "value", "value": _spec_dict()})
    return cases


# -- engine.load arguments ------------------------------------------------------------------------------------
def load_cases(valid_bundle: str) -> list[Case]:
    cases: list[Case] = []
    table = [("backend", "cuda", "InputError", r"backend 'cuda'"), ("backend", 3, "InputError", r"backend"),
             ("backend", None, "InputError", r"backend"),
             ("backend", "tensorrt", "BackendUnavailable", r"tensorrt.*cannot run here.*Available"),
             ("precision", "int4", "InputError", r"precision"), ("precision", "int8", "InputError", r"int8"),
             ("precision", None, "InputError", r"precision"),
             ("max_batch", 0, "InputError", r"max_batch"), ("max_batch", -1, "InputError", r"max_batch"),
             ("max_batch", True, "InputError", r"max_batch"), ("max_batch", 2.5, "InputError", r"max_batch"),
             ("max_batch", "2", "InputError", r"max_batch"), ("device", -1, "InputError", r"device"),
             ("device", "0", "InputError", r"device"), ("device", 1.0, "InputError", r"device"),
             ("threads", 0, "InputError", r"threads|n must"), ("threads", -3, "InputError", r"threads|n must"),
             ("threads", "4", "InputError", r"threads|n must"), ("threads", 2.5, "InputError", r"threads|n must"),
             ("threads", True, "InputError", r"threads|n must")]
    for arg, value, expect, match in table:
        cases.append(Case(id=f"load/{arg}-{value!r}", group="load", entry="engine.load", expect=expect, match=match,
                          why=f"engine.load(bundle, {arg}={value!r})", file=valid_bundle, kwargs={arg: value}))
    for value in (None, 42, [VALID_NAME]):
        cases.append(Case(id=f"load/path-{type(value).__name__}", group="load", entry="engine.load",
                          expect="SliceRTError", match=r"bundle|path", why=f"engine.load({value!r})",
                          recipe=_value(value)))
    return cases


# -- PreprocessSpec.from_dict ------------------------------------------------------------------------------------
def spec_cases(out: Path) -> list[Case]:
    base = _spec_dict()
    folder = out / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, doc: Any, match: str, why: str) -> None:
        rel = f"specs/{name}.json"
        (out / rel).write_text(json.dumps(doc, allow_nan=True))
        cases.append(Case(id=f"spec/{name}", group="spec", entry="spec.from_dict", expect="InputError", match=match,
                          why=why, file=rel))

    def changed(**kw: Any) -> dict[str, Any]:
        return {**base, **kw}

    for name, doc in [("list", [base]), ("string", "out_height=32"), ("number", 32), ("null", None)]:
        add(f"not-an-object-{name}", doc, r"expected a JSON object", f"a JSON {name} instead of an object")
    add("unknown-field", changed(gamma=2.2), r"unknown field.*gamma", "an unknown field 'gamma'")
    add("missing-out-height", {k: v for k, v in base.items() if k != "out_height"}, r"missing.*out_height",
        "out_height missing")
    add("missing-both-sides", {k: v for k, v in base.items() if k not in ("out_height", "out_width")},
        r"missing.*out_height.*out_width", "out_height and out_width missing")
    for field_name, values in {
        "out_height": [0, -1, 8193, 1.5, "32", True, None, 10**30],
        "out_width": [0, 10**12],
        "in_channels": [0, 2, 4, "1"], "out_channels": [2, 1.0],
        "layout": ["CHW", "nchw", 1], "out_dtype": ["uint8", "float64", None],
        "voi_function": ["gamma", "LINEAR", ""], "resize": ["cubic", True], "normalize": ["l2", 0],
        "quant_scale": [0, -1, "1"], "quant_zero_point": [128, -129, 1.5],
        "rescale_slope": [0, "1"], "voi_lut_bits": [0, 17, 8.5],
        "modality_lut_first_mapped": [1.5, "0"], "voi_lut_first_mapped": [2.5],
        "letterbox": [1, "true"], "invert": ["false", 0], "equalize": ["yes"],
        "modality_lut": [[], [[1, 2], [3, 4]], "abc", [1, "2"], [True, False]],
        "voi_lut": [[], {"0": 1}], "roi": [[1, 2, 3], [-1, 0, 10, 10], [0, 0, 0, 10], "0,0,10,10", [0.5, 0, 10, 10]],
        "mean": ["abc", [True]], "std": [[None]],
    }.items():
        for v in values:
            label = json.dumps(v).replace(" ", "").replace('"', "")[:24]
            add(f"{field_name}-{label}", changed(**{field_name: v}), re.escape(field_name),
                f"{field_name} = {v!r}")
    for field_name in ("quant_scale", "rescale_slope", "rescale_intercept", "window_center", "window_width",
                       "output_min", "output_max", "pad_value"):
        for label, v in (("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)):
            add(f"{field_name}-{label}", changed(**{field_name: v}), re.escape(field_name),
                f"{field_name} = {label} (JSON NaN/Infinity token)")
    for name, kw, match in [
        ("linear-width-zero", {"voi_function": "linear", "window_width": 0.0}, r"window_width"),
        ("sigmoid-width-half", {"voi_function": "sigmoid", "window_width": 0.5}, r"window_width"),
        ("linear-exact-width-zero", {"voi_function": "linear_exact", "window_width": 0.0}, r"window_width"),
        ("lut-without-table", {"voi_function": "lut", "voi_lut": None}, r"voi_lut"),
        ("output-range-empty", {"output_min": 1.0, "output_max": 1.0}, r"output_max"),
        ("output-range-reversed", {"output_min": 1.0, "output_max": 0.0}, r"output_max"),
        ("fixed-std-zero", {"normalize": "fixed", "std": [0.0]}, r"std"),
        ("fixed-std-negative", {"normalize": "fixed", "std": [-0.25]}, r"std"),
        ("fixed-mean-two-values-one-channel", {"normalize": "fixed", "mean": [0.5, 0.5]}, r"mean"),
        ("fixed-mean-nan", {"normalize": "fixed", "mean": [math.nan]}, r"mean"),
        ("modality-lut-nan", {"modality_lut": [0.0, math.nan]}, r"modality_lut"),
        ("voi-lut-inf", {"voi_function": "lut", "voi_lut": [0.0, math.inf]}, r"voi_lut"),
        # finite in JSON (float64) but beyond float32: the table is stored as float32
        ("voi-lut-beyond-float32", {"voi_function": "lut", "voi_lut": [0.0, 3.4028235677973366e38]}, r"voi_lut"),
        ("modality-lut-beyond-float32", {"modality_lut": [0.0, -1e39]}, r"modality_lut"),
        # PS3.3 C.11.2.1.1: entries lie in [0, 2^bits - 1]; beyond it the VOI output leaves its range
        ("voi-lut-entry-above-bits", {"voi_function": "lut", "voi_lut": [0.0, 2.0], "voi_lut_bits": 1}, r"voi_lut"),
        ("voi-lut-entry-negative", {"voi_function": "lut", "voi_lut": [-5.0, 100.0], "voi_lut_bits": 8},
         r"voi_lut"),
    ]:
        add(name, changed(**kw), match, f"{kw}")
    return cases
