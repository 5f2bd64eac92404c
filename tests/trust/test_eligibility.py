"""Eligibility from the DICOM header (engine/trust/eligibility.py) through real sessions: a CT slice to the
chest-radiograph model and an MR image to an ultrasound model are refused with the reason, or flagged."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import BundleError, IneligibleInput, InputError

from .conftest import data_file


def test_ct_slice_to_chest_radiograph_model_is_refused_with_the_reason(trust_bundles):
    import engine

    with engine.load(trust_bundles["cls"], threads=1) as s:  # default policy: refuse
        assert s.info["trust"]["eligibility"] == "refuse"
        with pytest.raises(IneligibleInput, match=r"CT_small\.dcm.*Modality CT is not one this model is intended "
                                                  r"for \(CR, DX\)") as exc:
            s.run(data_file("CT_small.dcm"))
        assert any("Modality CT" in r for r in exc.value.reasons)
        assert isinstance(exc.value, InputError)


def test_mr_image_to_ultrasound_model_is_refused_with_the_reason(trust_bundles):
    import engine

    with engine.load(trust_bundles["seg"], threads=1) as s:
        with pytest.raises(IneligibleInput, match=r"Modality MR is not one this model is intended for \(US\)"):
            s.run(data_file("MR_small.dcm"))
        with pytest.raises(IneligibleInput, match="Modality MR"):
            s.run_batch([data_file("MR_small.dcm")])
        with pytest.raises(IneligibleInput, match="Modality MR"):
            list(s.stream(data_file("emri_small.dcm"), drop_stale=False))


def test_flag_policy_runs_and_carries_the_reasons_through_run_batch_and_stream(trust_bundles):
    import engine

    with engine.load(trust_bundles["seg"], threads=1, eligibility="flag", max_batch=2) as s:
        r = s.run(data_file("MR_small.dcm"))
        assert r.flagged and r.mask is not None
        assert any("Modality MR" in e for e in r.eligibility)
        assert any(f.startswith("ineligible: Modality MR") for f in r.flags)
        batch = s.run_batch([data_file("MR_small.dcm"), data_file("CT_small.dcm")])
        assert [bool(b.eligibility) for b in batch] == [True, True]
        assert "Modality CT" in batch[1].eligibility[0]
        frames = list(s.stream(data_file("emri_small.dcm"), drop_stale=False))
        assert len(frames) == 10 and all(f.flagged and "Modality MR" in f.eligibility[0] for f in frames)


def test_an_intended_input_passes_and_raw_arrays_are_not_checked(trust_bundles, rng):
    import engine

    with engine.load(trust_bundles["seg"], threads=1) as s:
        r = s.run(data_file("US1_UNCR.dcm"), spec=None)  # US, RGB, 8 bits: what the bundle states
        assert r.eligibility == ()
        raw = s.run(rng.integers(0, 4096, (64, 64), dtype=np.uint16))
        assert raw.eligibility is None


def test_off_policy_and_a_bundle_without_a_declaration_check_nothing(trust_bundles):
    import engine

    with engine.load(trust_bundles["cls"], threads=1, eligibility="off") as s:
        assert s.run(data_file("CT_small.dcm")).eligibility is None
    with engine.load(trust_bundles["plain"], threads=1) as s:
        r = s.run(data_file("CT_small.dcm"))
        assert r.eligibility is None and r.ood is None and not r.flagged
        assert s.info["trust"]["eligibility"] == "not stated by the bundle"


def test_bad_policy_is_refused_at_load(trust_bundles):
    import engine

    with pytest.raises(InputError, match="eligibility must be one of"):
        engine.load(trust_bundles["cls"], eligibility="warn")
    with pytest.raises(InputError, match="ood must be True or False"):
        engine.load(trust_bundles["cls"], ood="yes")


def test_intended_inputs_check_each_attribute():
    import pydicom

    from engine import dicom
    from engine.trust.eligibility import IntendedInputs

    rg1 = dicom.read(data_file("RG1_UNCR.dcm"))  # CR, MONOCHROME1, CHEST, PA, 15 bits, no usable spacing
    ok = IntendedInputs(modalities=("CR",), photometric=("MONOCHROME1",), body_parts=("CHEST",),
                        view_positions=("PA",), bits_stored=(15, 15), pixel_spacing_mm=(0.1, 0.2))
    assert ok.check(rg1.info, rg1.dataset) == ()
    assert IntendedInputs(body_parts=("ABDOMEN",)).check(rg1.info, rg1.dataset) == (
        "BodyPartExamined CHEST is not one of ABDOMEN",)
    assert "ViewPosition PA" in IntendedInputs(view_positions=("AP", "LL")).check(rg1.info, rg1.dataset)[0]
    assert "BitsStored 15 is not 12" in IntendedInputs(bits_stored=(12, 12)).check(rg1.info, rg1.dataset)[0]
    ct = dicom.read(data_file("CT_small.dcm"))  # 0.661 mm pixels, no Body Part Examined
    assert "pixel spacing 0.6615 x 0.6615 mm" in IntendedInputs(pixel_spacing_mm=(1.0, 2.0)).check(ct.info)[0]
    assert IntendedInputs(body_parts=("CHEST",)).check(ct.info, ct.dataset) == ()  # absent: not held against it
    ds = pydicom.dcmread(data_file("US1_UNCR.dcm"))
    us = dicom.read(ds)
    assert "PhotometricInterpretation RGB" in IntendedInputs(photometric=("MONOCHROME2",)).check(us.info)[0]


@pytest.mark.parametrize("bad, match", [
    ({"modalities": "CT"}, "modalities must be a non-empty list"),
    ({"modalities": []}, "modalities must be a non-empty list"),
    ({"pixel_spacing_mm": [2.0, 1.0]}, "pixel_spacing_mm must be"),
    ({"bits_stored": [12.5, 16]}, "bits_stored must be"),
    ({"colour": ["RGB"]}, "unknown fields"),
])
def test_malformed_declarations_are_bundle_errors(bad, match):
    from engine.trust.eligibility import IntendedInputs

    with pytest.raises(BundleError, match=match):
        IntendedInputs.from_dict(bad)
