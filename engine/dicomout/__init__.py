"""Results as DICOM objects clinical systems accept, and a DICOM node that serves them.

- `seg.py`: a segmentation Result -> DICOM Segmentation (highdicom), referencing the source image.
- `sr.py`: any Result -> DICOM SR, TID 1500 measurement report (areas, class probabilities, OOD flag,
  model identity and latency), referencing the SEG's segments when there is one.
- `identity.py`: who made a result (model name, version, bundle SHA-256, precision variant).
- `source.py`: the source image header a SEG/SR must reference, checked.
- `node/`: `slicert serve-dicom`, a storage SCP (pynetdicom) that runs a bundle on each received image.

highdicom and pynetdicom are imported only here and only when these features run (extra `dicom`):
they are never on the inference hot path.
"""
