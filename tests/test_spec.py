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
