"""ImageInfo + a model's PreprocessSpec -> the PreprocessSpec for this image.

The model owns geometry, normalization, layout and dtype; the file owns how its stored values become
grey levels: modality LUT (PS3.3 C.11.1), VOI (C.11.2) and MONOCHROME1 inversion (C.7.6.3.1.2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import InputError

if TYPE_CHECKING:
    from engine.dicom.slice import ImageInfo
    from engine.spec import PreprocessSpec

VOI_POLICIES = ("dicom", "model")
_VOI_FIELDS = ("voi_function", "window_center", "window_width", "voi_lut", "voi_lut_first_mapped", "voi_lut_bits")


def spec_for(info: ImageInfo, model_spec: PreprocessSpec, voi_policy: str = "dicom") -> PreprocessSpec:
    """Fill the DICOM-derived fields of `model_spec` for this image.

    voi_policy "dicom": the file's VOI. A VOI LUT Sequence wins over windows when both are present
    (pydicom's default too; PS3.3 C.11.2 leaves the choice to the application), then the first
    window with the file's VOI LUT Function; with neither, a LINEAR_EXACT window spanning the full
    modality-output range (colour images: the full sample range) so the output spans
    [output_min, output_max]. voi_policy "model": keep model_spec's VOI fields (e.g. a fixed HU
    window for CT). Either way the modality LUT, `invert` (MONOCHROME1) and `in_channels` come from
    the file.
    """
    from engine.spec import PreprocessSpec

    if not isinstance(model_spec, PreprocessSpec):
        raise InputError(f"spec_for: model_spec must be a PreprocessSpec, got {type(model_spec).__name__}")
    if voi_policy not in VOI_POLICIES:
        raise InputError(f"spec_for: voi_policy must be one of {VOI_POLICIES}, got {voi_policy!r}")

    changes: dict = {"in_channels": 3 if info.is_color else 1, "invert": info.invert}
    mlut = info.modality_lut
    if mlut.kind == "table":
        assert mlut.lut is not None
        changes.update(rescale_slope=1.0, rescale_intercept=0.0, modality_lut=mlut.lut.table,
                       modality_lut_first_mapped=mlut.lut.first_mapped)
    else:
        changes.update(rescale_slope=mlut.slope, rescale_intercept=mlut.intercept, modality_lut=None,
                       modality_lut_first_mapped=0)

    if voi_policy == "dicom":
        changes.update(_file_voi(info))
    return model_spec.replace(**changes)


def _file_voi(info: ImageInfo) -> dict:
    if info.voi_luts:
        lut = info.voi_luts[0]
        return dict(voi_function="lut", voi_lut=lut.table, voi_lut_first_mapped=lut.first_mapped,
                    voi_lut_bits=lut.bits, window_center=0.0, window_width=1.0)
    none = dict(voi_lut=None, voi_lut_first_mapped=0, voi_lut_bits=16)
    if info.windows:
        w = info.windows[0]
        return dict(voi_function=info.voi_lut_function.lower(), window_center=w.center, window_width=w.width,
                    **none)
    lo, hi = info.value_range
    # LINEAR_EXACT (C.11.2.1.3.2) maps [c - w/2, c + w/2] exactly onto the output range.
    return dict(voi_function="linear_exact", window_center=(lo + hi) / 2.0, window_width=float(hi - lo), **none)
