"""Root causes of issue 13 (independent attack corpus): resource bombs refused before the expensive
step, values the file states in places the reader did not look (Enhanced multi-frame functional
groups), offset tables, absurd spacing, and values that vanish in float32."""
from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest

from engine import dicom
from engine.dicom import color
from engine.errors import DicomError
from tests.corpus.hostile_dicom import segmented_lut_words, with_segmented_palette

from .oracle import data_file


def _bytes(ds) -> bytes:
    from tests.corpus.dicom_files import _write

    return _write(ds)


# -- segmented palette LUT fan-out (PS3.3 C.7.9.2) ---------------------------------------------------
@pytest.mark.parametrize("fan_out,layers,leaf,bits", [(20, 8, "discrete0", 16), (8, 8, "linear0", 16),
                                                      (6, 6, "discrete0", 8), (40, 4, "indirect0", 16)])
def test_segmented_lut_fan_out_is_bounded(monkeypatch, fan_out, layers, leaf, bits):
    calls = []
    original = color._expand_segments

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(color, "_expand_segments", counting)
    words = segmented_lut_words(fan_out, layers, leaf, bits)
    ramp = [0, 1, 0, 1, 255, (1 << bits) - 1]
    ds = with_segmented_palette((ramp, words, ramp), bits)
    with pytest.raises(DicomError, match=r"SegmentedGreenPaletteColorLookupTableData \(0028,1222\).*"
                                         r"(fan-out|nest too deeply)"):
        dicom.read(_bytes(ds))
    # fan_out ** layers expansions naively (up to 2.6e10); the budget allows 4 x (data + entries)
    assert len(calls) <= 4 * (len(words) + 256) + 64 + 2, len(calls)


def test_segmented_lut_valid_indirect_segment_still_expands():
    # discrete 0; linear to 30000 over 127; replay that linear segment (now from 30000 to 30000: flat)
    nested = [0, 1, 0, 1, 127, 30000, 2, 1, 6, 0, 1, 128, 65535]
    table = color._segmented(struct.pack(f"<{len(nested)}H", *nested), 256, 16, True, "x", "k")
    lin = np.around(np.linspace(30000 / 127, 30000, 127))
    want = np.concatenate([[0], lin, np.full(127, 30000), [round(30000 + 35535 / 128)]])  # ramp starts at 255
    np.testing.assert_array_equal(table, want[:256])
