"""Parameter and FLOP counts measured with forward hooks (no third-party profiler).

Convention: one multiply-accumulate (MAC) = 2 FLOPs. Counted: Conv2d (incl. bias), ConvTranspose2d,
Linear. Not counted: BatchNorm (folded into the conv at export), ReLU, Add, Resize, pooling, which
are elementwise and < 2 % of the total for these networks.
"""
from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass on an input of `input_shape` (N included)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        per_out = (m.in_channels // m.groups) * kh * kw + (1 if m.bias is not None else 0)
        total += out.numel() * per_out

    def convt_hook(m: nn.ConvTranspose2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        # Each input element scatters into out_channels/groups * kh * kw outputs.
        total += inp[0].numel() * (m.out_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * (m.in_features + (1 if m.bias is not None else 0))

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.ConvTranspose2d):
            handles.append(mod.register_forward_hook(convt_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """{"params", "macs", "flops"} for batch 1 of `input_shape` (C, H, W)."""
    macs = count_macs(model, (1, *input_shape))
    return {"params": count_params(model), "macs": macs, "flops": 2 * macs}


def onnx_profile(model_bytes: bytes) -> dict:
    """{"params", "macs", "flops"} of an ONNX model at batch 1, same convention (Conv, ConvTranspose,
    Gemm/MatMul with a constant weight), from ONNX shape inference: for teachers given only as ONNX."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model_bytes)
    inp = m.graph.input[0]
    for d in inp.type.tensor_type.shape.dim[:1]:  # batch 1
        d.ClearField("dim_param")
        d.dim_value = 1
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    params = int(sum(np.prod(v.shape) for v in inits.values() if v.dtype.kind == "f"))
    macs = 0
    for n in m.graph.node:
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        out = shapes.get(n.output[0])
        if w is None:
            continue
        bias = 1 if len(n.input) > 2 and n.input[2] else 0
        if n.op_type == "Conv" and out:
            macs += int(np.prod(out)) * (int(np.prod(w.shape[1:])) + bias)
        elif n.op_type == "ConvTranspose":
            x = shapes.get(n.input[0])
            if x:
                macs += int(np.prod(x)) * int(np.prod(w.shape[1:]))
        elif n.op_type in ("Gemm", "MatMul") and out:
            k = w.shape[0] if n.op_type == "MatMul" or not any(a.name == "transB" and a.i for a in n.attribute) \
                else w.shape[1]
            macs += int(np.prod(out)) * (int(k) + bias)
    return {"params": params, "macs": macs, "flops": 2 * macs}
