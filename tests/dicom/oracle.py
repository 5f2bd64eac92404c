"""Real DICOM test files (pydicom's own and the pydicom-data / deid-data packages) and the pydicom
reference chain the reader is checked against."""
from __future__ import annotations

import os

import numpy as np


def data_file(name: str) -> str:
    """Path of a pydicom / pydicom-data test file. Never get_testdata_files(): it goes online."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: install the test dependency pydicom-data"
    return path


def deid_file(dataset: str, name: str) -> str:
    import deid_data.data

    path = os.path.join(os.path.dirname(deid_data.data.__file__), dataset, name)
    assert os.path.exists(path), f"{path} missing: install the test dependency deid-data"
    return path


def pydicom_reference(ds, index: int | None = None) -> np.ndarray:
    """Grey levels of `ds` by pydicom's own chain, mapped to [0, 1] (float64).

    pydicom's outputs are in different units per step, so each is mapped onto [0, 1] the way SliceRT
    maps its output range (output_min=0, output_max=1):
    - VOI LUT (apply_voi): entries in [0, 2^bits - 1] (LUT Descriptor value 3)      -> v / (2^bits - 1)
    - window (apply_windowing): [y_min, y_max] = the modality output range pydicom derives from
      BitsStored/PixelRepresentation/Rescale or the Modality LUT bit depth         -> (v - y_min) / (y_max - y_min)
    - no VOI: the modality output unchanged; same range as above                    -> (v - y_min) / (y_max - y_min)
    - MONOCHROME1: 1 - v (pydicom leaves inversion to the caller; PS3.3 C.7.6.3.1.2 puts it after VOI)
    - PALETTE COLOR (apply_color_lut): entries in [0, 2^bits - 1] (descriptor value 3) -> v / (2^bits - 1)
    - RGB / YBR (pixel_array, which runs convert_color_space for YBR)               -> v / (2^BitsStored - 1)
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    arr = pixel_array(ds, index=index)
    pi = ds.PhotometricInterpretation
    if pi == "PALETTE COLOR":
        bits = ds.RedPaletteColorLookupTableDescriptor[2]
        return apply_color_lut(arr, ds) / (2.0**bits - 1)
    if ds.SamplesPerPixel == 3:
        return arr / (2.0**ds.BitsStored - 1)
    modality = apply_modality_lut(arr, ds)
    voi = apply_voi_lut(modality, ds)  # pydicom: VOI LUT preferred over windows, first item/window
    if ds.get("VOILUTSequence"):
        out = voi / (2.0 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1)
    else:
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
        else:
            bs = ds.BitsStored
            lo, hi = (0.0, 2.0**bs - 1) if ds.PixelRepresentation == 0 else (-(2.0 ** (bs - 1)), 2.0 ** (bs - 1) - 1)
            if "RescaleSlope" in ds and "RescaleIntercept" in ds:
                a = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                b = hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                lo, hi = min(a, b), max(a, b)
        out = (voi - lo) / (hi - lo)
    if pi == "MONOCHROME1":
        out = 1.0 - out
    return out


def kernel_grey_levels(slice_) -> np.ndarray:
    """SliceRT's grey levels before resizing: the native kernel with out size = source size and
    nearest resampling (the identity geometry), output range [0, 1], as (H, W) or (H, W, 3)."""
    from engine.preprocess import preprocess
    from engine.spec import PreprocessSpec

    channels = 3 if slice_.is_color else 1
    model = PreprocessSpec(out_height=slice_.rows, out_width=slice_.columns, resize="nearest",
                           out_channels=channels, output_min=0.0, output_max=1.0)
    out = preprocess(slice_.pixels, slice_.spec_for(model))[0]
    return np.moveaxis(out, 0, -1) if channels == 3 else out[0]
