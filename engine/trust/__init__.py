"""Say when not to trust an answer (docs/trust.md).

  eligibility   is this DICOM an input the bundle is intended for? (header only, before inference)
  ood           how far is this input from the training data? (model input statistics + the model's
                own penultimate features / logits, from the one inference call)
  calibration   temperature scaling of the probabilities, fitted per variant on the validation split
  saliency      class-activation maps (classifiers) and per-pixel confidence (segmenters), on request
  graph         build time: the extra ONNX outputs (features, CAM) the signals read
  guard         the per-session glue Session calls

Runtime modules import NumPy only; `graph` imports onnx / onnxruntime when the bundle is built.
"""
