"""Datasets from a user's DICOM folder: check, split by patient, and turn into model inputs with the
runtime's own reader and kernel.

    from tools import model_spec
    from tools.dataset import open_folder
    spec = model_spec.load("spec.json")
    ds = open_folder("dicom/", spec, labels="labels.csv")          # or masks="masks/"
    print(ds.report["classes"], ds.report["unusable"])
    x, y = ds.inputs("train"), ds.targets["train"]                 # (N, C, H, W) float32, targets

CLI: `slicert dataset check DIR --labels labels.csv [--masks DIR] [--spec spec.json]`.
"""
from __future__ import annotations

from tools.dataset.folder import DicomFolder, model_inputs, open_folder, report_markdown

__all__ = ["DicomFolder", "model_inputs", "open_folder", "report_markdown"]
