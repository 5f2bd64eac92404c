"""Checks on a bundle's ONNX members before any runtime sees them: a small reader of the protobuf wire
format (nothing is loaded or executed, external data is never followed, and `import onnx`, several
seconds of start-up on a small device, is not needed to open a bundle).

1. No tensor may live outside the model bytes. An ONNX tensor can say "my data is in file X"
   (data_location = EXTERNAL, external_data entries); ONNX Runtime resolves X against the process's
   working directory when a model is loaded from bytes, so a checksum-valid bundle loaded by a service
   running in `/` would read `/etc/passwd` into its weights. Every tensor is checked: initializers,
   sparse initializers, `Constant`-style node attributes (t, tensors, sparse_tensor(s)), in every
   subgraph (If/Loop/Scan bodies), in model-local functions and in training-info graphs. Protobuf
   merges repeated occurrences of a message field, so every occurrence is checked, not the last.
2. Bounded loops. SliceRT models are feed-forward image networks; the load-time warm-up runs each
   model, and an ONNX Runtime `Loop` whose body has no node never checks RunOptions.terminate, so a
   Loop of 10^15 iterations cannot be interrupted once started (measured: the watchdog's terminate
   flag ends a Loop with a body in ~1 s, an empty-bodied one never). Hence refused before loading:
   a Loop whose trip count is not a constant (absent, i.e. a while-loop, or computed at run time)
   or whose constant trip count, multiplied over nested Loops, exceeds MAX_LOOP_ITERATIONS. Scan
   iterates over a tensor's axis, so its count is bounded by data that exists. A backend's warm-up
   also runs under a time limit (engine/backends/onnxruntime.py) for heavy but bounded bodies.
3. The model takes what the preprocessing writes: its image input's element type must be the
   manifest spec's out_dtype (else every `run` would fail with an error blaming the caller).
"""
from __future__ import annotations

from engine.errors import BundleError

MAX_LOOP_ITERATIONS = 1 << 16  # over all nested Loops of one path; far above any image model's need
_MAX_DEPTH = 64  # subgraph nesting; protobuf's own default recursion limit is 100
_ONNX_ELEM = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
              10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_REBUILD = "rebuild the bundle from a self-contained export (onnx.save(model, f, save_as_external_data=False))"

# Field numbers, onnx/onnx.proto3 (IR version 10).
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_INPUT, _GRAPH_SPARSE = 1, 5, 11, 15
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP, _NODE_ATTR, _NODE_DOMAIN = 1, 2, 3, 4, 5, 7
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 1, 5, 6, 10, 11, 22, 23
_T_DIMS, _T_TYPE, _T_INT32, _T_INT64, _T_NAME, _T_RAW, _T_EXTDATA, _T_LOCATION = 1, 2, 5, 7, 8, 9, 13, 14
_FUNCTION_NODE = 7
_TRAINING_INIT, _TRAINING_ALGO = 1, 2


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value): value is an int (varint/fixed) or a memoryview (bytes)."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise _Malformed("truncated fixed64")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise _Malformed("length-delimited field runs past its message")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            if pos + 4 > n:
                raise _Malformed("truncated fixed32")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:  # 3/4 (groups) do not occur in onnx.proto
            raise _Malformed(f"wire type {wire}")
        yield field, wire, value


def _text(v) -> str:
    return bytes(v).decode("utf-8", "replace") if isinstance(v, memoryview) else ""


class _Tensor:
    """What the checks need of a TensorProto: name, external flags, and a scalar integer value."""

    def __init__(self, buf: memoryview):
        self.name, self.external, self.location = "", False, ""
        self.dtype, self.dims, self.raw, self.ints = 0, [], None, []
        for field, wire, v in _fields(buf):
            if field == _T_NAME and wire == 2:
                self.name = _text(v)
            elif field == _T_LOCATION and wire == 0 and v == _EXTERNAL:
                self.external = True
            elif field == _T_EXTDATA:
                self.external = True
                if wire == 2:
                    entry = {f: _text(x) for f, w, x in _fields(v) if w == 2}
                    if entry.get(1) == "location":
                        self.location = entry.get(2, "")
            elif field == _T_TYPE and wire == 0:
                self.dtype = v
            elif field == _T_DIMS:
                self.dims += _ints(wire, v)
            elif field == _T_RAW and wire == 2:
                self.raw = bytes(v[:16])
            elif field in (_T_INT64, _T_INT32):
                self.ints += _ints(wire, v)

    def scalar_int(self) -> int | None:
        count = 1
        for d in self.dims:
            count *= d
        if count != 1:
            return None
        if self.raw is not None:
            size = {7: 8, 6: 4}.get(self.dtype)
            if size is None or len(self.raw) < size:
                return None
            return int.from_bytes(self.raw[:size], "little", signed=True)
        if len(self.ints) != 1:
            return None
        v = self.ints[0]
        return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, v) -> list[int]:
    if wire == 0:
        return [v]
    if wire == 2:  # packed
        out, pos, buf = [], 0, v
        while pos < len(buf):
            x, pos = _varint(buf, pos)
            out.append(x)
        return out
    return []


class _Walker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, what: str) -> None:
        raise BundleError(f"{self.where}: {what}")

    def tensor(self, buf: memoryview, role: str) -> _Tensor:
        t = _Tensor(buf)
        if t.external:
            self.fail(f"tensor {t.name!r} ({role}) refers to external data {t.location[:200]!r}; a bundle's models "
                      f"must hold all their data (an external path would be read from the loading machine); "
                      f"{_REBUILD}")
        return t

    def sparse(self, buf: memoryview, role: str) -> None:
        for field, wire, v in _fields(buf):
            if field in (1, 2) and wire == 2:  # values, indices
                self.tensor(v, f"{role} {'values' if field == 1 else 'indices'}")

    def graph(self, buf: memoryview, scope: str, outer: dict[str, _Tensor], trips: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.fail(f"subgraphs nest more than {_MAX_DEPTH} deep ({scope})")
        consts = dict(outer)
        nodes = []
        for field, wire, v in _fields(buf):
            if wire != 2:
                continue
            if field == _GRAPH_INIT:
                t = self.tensor(v, f"initializer in {scope}")
                consts[t.name] = t
            elif field == _GRAPH_SPARSE:
                self.sparse(v, f"sparse initializer in {scope}")
            elif field == _GRAPH_NODE:
                nodes.append(v)
        for v in nodes:  # after the initializers: protobuf fields may come in any order
            self.node(v, scope, consts, trips, depth)

    def node(self, buf: memoryview, scope: str, consts: dict[str, _Tensor], trips: int, depth: int) -> None:
        inputs, outputs, attrs, name, op, domain = [], [], [], "", "", ""
        for field, wire, v in _fields(buf):
            if wire != 2:
                continue
            if field == _NODE_INPUT:
                inputs.append(_text(v))
            elif field == _NODE_OUTPUT:
                outputs.append(_text(v))
            elif field == _NODE_NAME:
                name = _text(v)
            elif field == _NODE_OP:
                op = _text(v)
            elif field == _NODE_DOMAIN:
                domain = _text(v)
            elif field == _NODE_ATTR:
                attrs.append(v)
        label = f"node {(name or op)!r} ({op}) in {scope}"
        inner = trips
        if op == "Loop" and domain in ("", "ai.onnx"):
            inner = trips * self.loop_trips(inputs, consts, label)
            if inner > MAX_LOOP_ITERATIONS:
                self.fail(f"{label} nests loops of {inner} iterations in all; SliceRT refuses more than "
                          f"{MAX_LOOP_ITERATIONS} (the load-time warm-up would not return)")
        value = None
        for a in attrs:
            attr_name = ""
            for field, wire, v in _fields(a):
                if field == _ATTR_NAME and wire == 2:
                    attr_name = _text(v)
            role = f"attribute {attr_name!r} of {label}"
            for field, wire, v in _fields(a):
                if wire != 2:
                    continue
                if field in (_ATTR_T, _ATTR_TENSORS):
                    t = self.tensor(v, role)
                    if field == _ATTR_T and attr_name == "value":
                        value = t
                elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
                    self.sparse(v, role)
                elif field in (_ATTR_G, _ATTR_GRAPHS):
                    self.graph(v, f"subgraph {attr_name!r} of {label}", consts, inner, depth + 1)
        if op == "Constant" and outputs and value is not None:
            consts[outputs[0]] = value

    def loop_trips(self, inputs: list[str], consts: dict[str, _Tensor], label: str) -> int:
        name = inputs[0] if inputs else ""
        if not name:
            self.fail(f"{label} has no trip count (a while-loop); SliceRT refuses loops it cannot bound before "
                      f"running them")
        t = consts.get(name)
        if t is None:
            self.fail(f"{label} has a trip count {name!r} computed at run time; SliceRT refuses loops whose "
                      f"iteration count is not a constant in the model")
        n = t.scalar_int()
        if n is None:
            self.fail(f"{label}: its trip count {name!r} is not one integer")
        if n < 0 or n > MAX_LOOP_ITERATIONS:
            self.fail(f"{label} runs {n} iterations; SliceRT refuses more than {MAX_LOOP_ITERATIONS} (the load-time "
                      f"warm-up would not return)")
        return max(n, 1)


def _input_elem_types(graph: memoryview) -> list[tuple[str, int]]:
    """(name, elem_type) of the graph inputs that are not initializers, in order."""
    inits, inputs = set(), []
    for field, wire, v in _fields(graph):
        if wire != 2:
            continue
        if field == _GRAPH_INIT:
            inits.add(_Tensor(v).name)
        elif field == _GRAPH_INPUT:
            name, elem = "", 0
            for f, w, x in _fields(v):
                if f == 1 and w == 2:
                    name = _text(x)
                elif f == 2 and w == 2:  # TypeProto -> tensor_type (1) -> elem_type (1)
                    for f2, w2, x2 in _fields(x):
                        if f2 == 1 and w2 == 2:
                            elem = next((x3 for f3, w3, x3 in _fields(x2) if f3 == 1 and w3 == 0), elem)
            inputs.append((name, elem))
    return [(n, e) for n, e in inputs if n not in inits]


def check_model(data: bytes, where: str, input_dtype: str | None = None) -> None:
    """Refuse an ONNX model with external data, unbounded loops, or (when `input_dtype` is given) an
    image input of another element type. Raises BundleError naming `where` and the tensor/node."""
    buf = memoryview(data)
    w = _Walker(where)
    try:
        graphs = 0
        for field, wire, v in _fields(buf):
            if wire != 2:
                continue
            if field == _MODEL_GRAPH:
                graphs += 1
                w.graph(v, "the main graph", {}, 1, 0)
                if input_dtype is not None:
                    for name, elem in _input_elem_types(v)[:1]:  # the image input
                        got = _ONNX_ELEM.get(elem, f"onnx type {elem}")
                        if got != input_dtype:
                            w.fail(f"input {name!r} takes {got}, but the manifest's preprocessing writes {input_dtype} "
                                   f"(spec out_dtype); the model and the manifest disagree, rebuild the bundle")
            elif field == _MODEL_FUNCTIONS:
                fn_name = next((_text(x) for f, wt, x in _fields(v) if f == 1 and wt == 2), "?")
                for f, wt, x in _fields(v):
                    if f == _FUNCTION_NODE and wt == 2:
                        w.node(x, f"function {fn_name!r}", {}, 1, 1)
            elif field == _MODEL_TRAINING:
                for f, wt, x in _fields(v):
                    if f in (_TRAINING_INIT, _TRAINING_ALGO) and wt == 2:
                        w.graph(x, "a training_info graph", {}, 1, 1)
        if graphs == 0:
            raise _Malformed("no graph")
    except _Malformed as exc:
        raise BundleError(f"{where} is not an ONNX model (malformed protobuf: {exc})") from None
    except RecursionError:
        raise BundleError(f"{where}: subgraphs nest too deeply") from None


def onnx_members(manifest: dict) -> set[str]:
    """Every member a runtime may load as ONNX: those the variants name, and any other *.onnx."""
    names = {n for n in manifest["members"] if n.endswith(".onnx")}
    for entry in manifest["variants"].values():
        names.update(entry[k] for k in ("onnx", "onnx_cpu", "ort") if entry.get(k))
    return names


def check_bundle(bundle, data: dict[str, bytes] | None = None) -> None:
    """check_model on every ONNX member of an open bundle; `data`: their bytes, already read."""
    out_dtype = bundle.spec.out_dtype
    data = data or {}
    for name in sorted(onnx_members(bundle.manifest)):
        raw = data.get(name)
        check_model(raw if raw is not None else bundle.read(name), f"bundle {bundle.path.name}, member {name!r}",
                    out_dtype)
