"""A teacher from the user: a PyTorch nn.Module (Python API), a TorchScript file or an ONNX file.

Distillation needs only the teacher's outputs (logits), so an ONNX teacher runs under ONNX Runtime
and never has to be PyTorch. Whatever the form, the teacher is checked against the model spec before
any training: its input must be (N, C, H, W) with the spec's C, H, W (dynamic dimensions accepted),
and a probe batch must give logits (N, K) for classification or (N, K, H, W) for segmentation with K
= the spec's class count. TeacherError names the file (or the module) otherwise.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.errors import TeacherError


@dataclass
class Teacher:
    """module: a torch.nn.Module giving logits (eval mode, frozen), for ONNX a wrapper around ONNX Runtime."""

    module: Any
    kind: str  # "pytorch" | "torchscript" | "onnx"
    source: str  # file path or the module's class name
    sha256: str  # of the file, or of the module's state dict
    onnx_path: Path | None = None

    def predict(self, x: np.ndarray, batch: int = 32) -> np.ndarray:
        """Logits for model inputs (N, C, H, W) float32."""
        import torch

        from tools.train import predict

        return predict(self.module, torch.from_numpy(np.ascontiguousarray(x)), batch)


def _expected_out(task: str, k: int, hw: tuple[int, int]) -> str:
    return f"(N, {k})" if task == "classification" else f"(N, {k}, {hw[0]}, {hw[1]})"


def _check_output(out: np.ndarray, spec, where: str) -> None:
    k = len(spec.labels)
    hw = spec.chw[1:]
    ok = (out.ndim == 2 and out.shape[1] == k) if spec.task == "classification" else \
        (out.ndim == 4 and out.shape[1] == k and tuple(out.shape[2:]) == tuple(hw))
    if not ok:
        raise TeacherError(f"{where}: the teacher's output has shape {tuple(out.shape)} for a batch of 2, but the spec "
                           f"({spec.task}, {k} labels {list(spec.labels)}, input {hw[0]}x{hw[1]}) needs "
                           f"{_expected_out(spec.task, k, hw)} logits")
    if not np.all(np.isfinite(out)):
        raise TeacherError(f"{where}: the teacher gives NaN/Inf outputs on a probe batch")


class OnnxTeacher:
    """An ONNX model under ONNX Runtime (CPU), callable like a frozen torch module returning logits."""

    def __init__(self, path: Path, threads: int = 2):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.training = False

    def __call__(self, x):
        import torch

        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.sess.run(None, {self.input: arr})[0].astype(np.float32))

    # The training loop treats the teacher as a torch module: eval() and parameters() are enough.
    def eval(self):
        return self

    def parameters(self):
        return iter(())


def _onnx(path: Path, spec) -> Teacher:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends on a damaged file
        raise TeacherError(f"{path}: not a readable ONNX model ({exc})") from None
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise TeacherError(f"{path}: a teacher has one input and one output, this model has {len(inputs)} and "
                           f"{len(model.graph.output)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    want = spec.chw
    if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want)):
        shown = ["N" if d is None else d for d in dims]
        raise TeacherError(f"{path}: input {inputs[0].name!r} has shape {shown}, but the spec ({spec.where}) makes "
                           f"[N, {want[0]}, {want[1]}, {want[2]}] inputs; fix the spec's input size/channels or "
                           f"export the teacher for that size")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise TeacherError(f"{path}: input must be float32 (the spec makes float32 tensors)")
    try:
        mod = OnnxTeacher(path)
        out = mod(_probe(spec)).numpy()
    except TeacherError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise TeacherError(f"{path}: ONNX Runtime cannot run the teacher on a (2, {', '.join(map(str, want))}) "
                           f"batch ({exc})") from None
    _check_output(out, spec, str(path))
    return Teacher(mod, "onnx", str(path), _sha_file(path), onnx_path=path)


def _probe(spec):
    import torch

    # Not zeros: a constant input hides models that only work for one value range.
    g = torch.Generator().manual_seed(0)
    return torch.rand((2, *spec.chw), generator=g)


def _torch_module(module, spec, where: str, kind: str, sha: str) -> Teacher:
    import torch

    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            out = module(_probe(spec))
    except Exception as exc:  # a module with another input shape raises RuntimeError from its first layer
        raise TeacherError(f"{where}: the teacher fails on a (2, {', '.join(map(str, spec.chw))}) input batch made by "
                           f"the spec ({spec.where}): {type(exc).__name__}: {str(exc)[:300]}") from None
    if isinstance(out, (tuple, list)) or not isinstance(out, torch.Tensor):
        raise TeacherError(f"{where}: the teacher must return one logits tensor, got {type(out).__name__}")
    _check_output(out.float().numpy(), spec, where)
    return Teacher(module, kind, where, sha)


def _sha_file(path: Path) -> str:
    from tools.io import sha256_file

    return sha256_file(path)


def state_sha(module) -> str:
    """SHA-256 of a module's class and weights (what makes its outputs what they are)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()


def load_teacher(teacher: Any, spec) -> Teacher:
    """An nn.Module, or a path to an .onnx or TorchScript (.pt/.pth/.ts) file -> a checked Teacher."""
    try:
        import torch
        from torch import nn
    except ImportError as exc:
        raise TeacherError(f"the toolchain needs PyTorch (pip install slicert[tools]): {exc}") from None
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return _torch_module(teacher, spec, f"{type(teacher).__name__} (nn.Module)", "pytorch", state_sha(teacher))
    if isinstance(teacher, (str, Path)):
        p = Path(teacher).expanduser()
        if not p.is_file():
            raise TeacherError(f"{p}: teacher file not found")
        if p.suffix.lower() == ".onnx":
            return _onnx(p, spec)
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError on a non-TorchScript file
            raise TeacherError(f"{p}: not an ONNX (.onnx) or TorchScript file ({str(exc)[:200]}); a state dict alone "
                               f"holds no architecture: pass the nn.Module through the Python API "
                               f"(tools.byom.distill(teacher=module, ...))") from None
        return _torch_module(module, spec, str(p), "torchscript", _sha_file(p))
    raise TeacherError(f"teacher must be an nn.Module or a path to an ONNX / TorchScript file, got "
                       f"{type(teacher).__name__}")
