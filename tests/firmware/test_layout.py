"""The shared-memory contract: C header and Python layout agree field by field; geometry and names are
checked like the untrusted input they are."""

from __future__ import annotations

import re

import pytest

from engine.errors import SharedMemoryError
from engine.worker import layout as L
from tests.firmware.fwutil import CLIENT_DIR, unique_name

_DEFINE = re.compile(r"^#define SLRT_([A-Z0-9_]+) (0x[0-9A-Fa-f]+|\d+)(?:u|ULL)?\b", re.M)


def _c_constants() -> dict[str, int]:
    text = (CLIENT_DIR / "slicert_shm_layout.h").read_text()
    return {name: int(value, 0) for name, value in _DEFINE.findall(text)}


def test_c_header_and_python_layout_agree_on_every_field():
    c = _c_constants()
    assert len(c) > 60
    missing, wrong = [], []
    for name, value in c.items():
        py = getattr(L, name, None)
        if py is None:
            missing.append(name)
        elif py != value:
            wrong.append((name, value, py))
    assert not missing, f"in the C header but not in engine/worker/layout.py: {missing}"
    assert not wrong, f"C and Python disagree (name, C, Python): {wrong}"
    py_fields = {n for n in dir(L) if re.match(r"^(H|L|S|RF|STATE)_[A-Z0-9_]+$", n)}
    assert py_fields <= set(c), f"in Python but not in the C header: {sorted(py_fields - set(c))}"


def test_status_codes_match_the_public_header():
    text = (CLIENT_DIR / "slicert_client.h").read_text()
    codes = {m[0]: int(m[1]) for m in re.findall(r"SLICERT_(E_[A-Z_]+|OK) = (\d+)", text)}
    assert codes["E_RESTARTED"] == L.STATUS_RESTARTED
    assert codes["E_DROPPED"] == L.STATUS_DROPPED
    assert codes["E_REJECTED"] == L.STATUS_REJECTED
    assert codes["OK"] == L.STATUS_OK
    assert len(set(codes.values())) == len(codes), "status codes are distinct"


def test_slot_fields_fit_their_blocks():
    assert L.S_MESSAGE + L.MESSAGE_BYTES <= L.SLOT_META_SIZE
    assert L.S_SCORES + 4 * L.MAX_CLASSES <= L.S_PIXEL_COUNTS
    assert L.S_PIXEL_COUNTS + 8 * L.MAX_CLASSES <= L.S_AREAS_MM2
    assert L.S_AREAS_MM2 + 8 * L.MAX_CLASSES <= L.S_MESSAGE
    assert L.H_LABELS + L.MAX_CLASSES * L.LABEL_BYTES <= L.HEADER_SIZE
    g = L.Geometry(lane_count=3, slots_per_lane=5, frame_capacity=1000, mask_capacity=7)
    assert g.slot_size % L.ALIGN == 0 and g.total_size == L.HEADER_SIZE + 3 * (
        L.LANE_HEADER_SIZE + 5 * g.slot_size
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("lane_count", 0),
        ("lane_count", 65),
        ("slots_per_lane", 0),
        ("frame_capacity", 0),
        ("frame_capacity", 1 << 40),
        ("mask_capacity", -1),
        ("hang_timeout_ms", 1),
        ("lane_count", 2.5),
        ("slots_per_lane", True),
    ],
)
def test_geometry_out_of_bounds_is_refused(field, value):
    with pytest.raises(SharedMemoryError, match=field):
        L.Geometry(**{field: value}).check()


@pytest.mark.parametrize("name", ["", "a/b", "../x", "x" * 201, "sp ace", 5])
def test_bad_segment_names_are_refused(name):
    with pytest.raises(SharedMemoryError):
        L.check_name(name)


def test_attach_refuses_missing_short_and_inconsistent_segments():
    name = unique_name()
    with pytest.raises(SharedMemoryError, match="does not exist"):
        L.Segment.attach(name)
    with open(L.shm_path(name), "wb") as f:
        f.write(b"\xff" * 5000)
    try:
        with pytest.raises(SharedMemoryError, match="bad magic"):
            L.Segment.attach(name)
    finally:
        L.unlink(name)
    seg = L.Segment.create(
        name, L.Geometry(lane_count=1, slots_per_lane=1, frame_capacity=64, mask_capacity=0)
    )
    try:
        with pytest.raises(SharedMemoryError, match="already exists"):
            L.Segment.create(name, seg.geometry, replace=False)
        with open(L.shm_path(name), "r+b") as f:  # grown behind the header's back
            f.truncate(seg.geometry.total_size + 4096)
        with pytest.raises(SharedMemoryError, match="file size"):
            L.Segment.attach(name)
    finally:
        seg.close()
        L.unlink(name)
