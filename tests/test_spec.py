from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import InputError
from engine.spec import PreprocessSpec


def test_round_trip_through_json():
    spec = PreprocessSpec(out_height=256, out_width=224, out_channels=3, voi_function="lut",
                          voi_lut=np.arange(10, dtype=np.float32) * 3, voi_lut_first_mapped=-5, invert=True,
                          roi=(1, 2, 30, 40), normalize="fixed", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    again = PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.voi_lut.dtype == np.float32 and not again.voi_lut.flags.writeable


@pytest.mark.parametrize("changes, field", [
    ({"out_height": 0}, "out_height"),
    ({"out_width": 10**6}, "out_width"),
    ({"voi_function": "linear", "window_width": 0.5}, "window_width"),
    ({"rescale_slope": float("nan")}, "rescale_slope"),
    ({"rescale_slope": 0.0}, "rescale_slope"),
    ({"layout": "CHW"}, "layout"),
    ({"voi_function": "lut"}, "voi_lut"),
    ({"out_dtype": "int4"}, "out_dtype"),
    ({"roi": (0, 0, 0, 5)}, "roi"),
    ({"normalize": "fixed", "std": (0.0,)}, "std"),
    ({"modality_lut": [1.0, float("inf")]}, "modality_lut"),
])
def test_invalid_fields_are_named(changes, field):
    with pytest.raises(InputError, match=field):
        PreprocessSpec(out_height=changes.pop("out_height", 8), out_width=changes.pop("out_width", 8), **changes)


@pytest.mark.parametrize("data, field", [
    ({"out_height": 8}, "out_width"),
    ({"out_height": 8, "out_width": 8, "bogus": 1}, "bogus"),
    ({"out_height": "8", "out_width": 8}, "out_height"),
    ({"out_height": 8, "out_width": 8, "invert": 1}, "invert"),
    ({"out_height": 8, "out_width": 8, "mean": "abc"}, "mean"),
    ([1, 2], "JSON object"),
])
def test_parser_rejects_bad_json(data, field):
    with pytest.raises(InputError, match=field):
        PreprocessSpec.from_dict(data)


@pytest.mark.parametrize("roi", [(0.5, 0, 10, 10), (0, 0, 10.0, 10), (True, 0, 10, 10), ("0", 0, 10, 10)])
def test_roi_must_be_whole_pixels(roi):
    # int(0.5) == 0 would silently move the crop; a ROI is in whole source pixels.
    with pytest.raises(InputError, match="roi"):
        PreprocessSpec(out_height=8, out_width=8, roi=roi)
    with pytest.raises(InputError, match="roi"):
        PreprocessSpec.from_dict({"out_height": 8, "out_width": 8, "roi": list(roi)})


def test_roi_accepts_numpy_integers():
    spec = PreprocessSpec(out_height=8, out_width=8, roi=tuple(np.array([1, 2, 3, 4], dtype=np.int64)))
    assert spec.roi == (1, 2, 3, 4) and all(type(v) is int for v in spec.roi)


@pytest.mark.parametrize("table, bits", [([0.0, 2.0], 1), ([-5.0, 100.0], 8), ([0.0, 4096.0], 12),
                                         ([0.0, 65536.0], 16)])
def test_voi_lut_entries_outside_their_bit_range_are_refused(table, bits):
    with pytest.raises(InputError, match=r"voi_lut.*C\.11\.2\.1\.1"):
        PreprocessSpec(out_height=8, out_width=8, voi_function="lut", voi_lut=table, voi_lut_bits=bits)


@pytest.mark.parametrize("bits", [1, 8, 12, 16])
def test_voi_lut_entries_at_their_bit_range_limits_are_accepted(bits):
    top = float((1 << bits) - 1)
    spec = PreprocessSpec(out_height=8, out_width=8, voi_function="lut", voi_lut=[0.0, top], voi_lut_bits=bits)
    assert spec.voi_lut.tolist() == [0.0, top]


@pytest.mark.parametrize("field, value", [("voi_lut", 3.4028235677973366e38), ("modality_lut", -1e39),
                                          ("modality_lut", 1e300)])
def test_tables_beyond_float32_are_refused_not_cast_to_inf(field, value):
    # filterwarnings=error: a float32 overflow in the cast would surface as RuntimeWarning, not InputError
    kwargs = {"voi_function": "lut"} if field == "voi_lut" else {}
    if field == "voi_lut":
        kwargs["voi_lut_bits"] = 16
    with pytest.raises(InputError, match=f"{field}.*float32"):
        PreprocessSpec(out_height=8, out_width=8, **kwargs, **{field: [0.0, value]})
    with pytest.raises(InputError, match=field):
        PreprocessSpec.from_dict({"out_height": 8, "out_width": 8, **kwargs, field: [0.0, value]})


def test_table_at_float32_max_is_kept_exactly():
    top = float(np.finfo(np.float32).max)
    spec = PreprocessSpec(out_height=8, out_width=8, modality_lut=[-top, top])
    assert spec.modality_lut.tolist() == [-top, top] and np.isfinite(spec.modality_lut).all()
