"""SliceRT toolchain: datasets, teacher/student models, knowledge distillation and ONNX export.

Runs on CPU with PyTorch (the `[tools]` extra). The runtime (`engine/`) never imports this package.
Data flow: tools.data (raw integer images + PreprocessSpec) -> engine.preprocess (native kernel)
-> tools.train / tools.distill -> tools.export (model.onnx + model.json, contract 5).
"""
