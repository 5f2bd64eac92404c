"""The pipelines a device maker would otherwise write, next to SliceRT, as benchmark configurations.

(1) FP32 teacher, PyTorch eager, user preprocessing;
(2) FP32 teacher exported to ONNX, ONNX Runtime, the same user preprocessing;
(3) FP32 student, ONNX Runtime, the same user preprocessing (or `openvino_user`: an OpenVINO IR, e.g.
    NNCF INT8, with the same user preprocessing; benchmarks/bench_cpu_backends.py);
(4) SliceRT: the INT8 / mixed student bundle via `engine.load` + `Session.run` (fused native preprocessing).

"User preprocessing" is what the pydicom docs and a typical notebook do: `pydicom.dcmread` +
`pixel_array`, `apply_modality_lut`, `apply_voi_lut` (float64), NumPy inversion for MONOCHROME1,
`cv2.resize(INTER_AREA)`, NumPy normalization. User post-processing: NumPy softmax (classification);
argmax, `cv2.resize(INTER_NEAREST)` back to the source geometry and per-class areas from Pixel Spacing
(segmentation). Each baseline's model input is checked against engine.preprocess on the same pixels
(`input_agreement`), so a faster number never comes from skipping work.

All configurations get the same thread budget (`threads`, default all usable cores) for every library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.bench.configs import SessionConfig
from engine.bench.runner import Pipeline
from engine.spec import PreprocessSpec

if TYPE_CHECKING:
    from tools import zoo


# -- inputs ------------------------------------------------------------------------------------------
@dataclass
class InputSet:
    """What one benchmark call consumes.

    kind "dicom_file": a path decoded on every call (decode is part of end to end);
    kind "frames": pre-decoded frames of a cine (a scanner hands frames over in memory), cycled;
    kind "raw": raw integer images (simulated data from the toolchain), cycled.
    `spec_for(model_spec)` gives the PreprocessSpec SliceRT applies to these inputs (for the
    agreement check); `user_params` the values the user code reads from DICOM or the spec.
    """

    name: str
    kind: str
    items: list[Any]
    description: str
    real: bool
    pixel_spacing_mm: tuple[float, float] | None = None
    slices: list[Any] | None = None  # engine.dicom Slices of the same frames (kind "frames")


def cr_file(path: str | Path) -> InputSet:
    return InputSet(
        "chest CR (RG1_UNCR.dcm, real)",
        "dicom_file",
        [str(path)],
        f"real chest CR {Path(path).name} from pydicom-data, decoded from file on every call",
        True,
    )


def cine_frames(path: str | Path, max_frames: int | None = None) -> InputSet:
    """Frames of a multi-frame ultrasound file, decoded once up front for both pipelines: the user's by
    pydicom (`pixel_array`), SliceRT's by engine.dicom (Slices). Pixel spacing (from the ultrasound
    region calibration) is read once per cine, as a user would."""
    import pydicom

    import engine.dicom

    ds = pydicom.dcmread(str(path))
    frames = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1)) == 1:
        frames = frames[None]
    seq = engine.dicom.read(str(path))
    count = min(len(frames), max_frames or len(frames))
    slices = [seq[i] for i in range(count)]
    for s in slices:
        _ = s.pixels  # decode now, outside the timed calls
    spacing = slices[0].pixel_spacing_mm
    return InputSet(
        "ultrasound cine (real)",
        "frames",
        [np.ascontiguousarray(frames[i]) for i in range(count)],
        f"real ultrasound cine {Path(path).name} (deid-data): {count} frames of {frames.shape[1:]} "
        f"{ds.PhotometricInterpretation}, decoded once before timing (a scanner hands frames over in "
        f"memory)",
        True,
        pixel_spacing_mm=spacing,
        slices=slices,
    )


def raw_images(name: str, images: Sequence[np.ndarray], description: str) -> InputSet:
    return InputSet(name, "raw", [np.ascontiguousarray(a) for a in images], description, False)


# -- user preprocessing --------------------------------------------------------------------------------
def user_decode(path: str) -> tuple[Any, np.ndarray]:
    import pydicom

    ds = pydicom.dcmread(path)
    return ds, ds.pixel_array


def user_preprocess_dicom(ds: Any, arr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The notebook way: pydicom LUTs (float64), invert, INTER_AREA resize, normalize -> (1,C,H,W)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    x = apply_modality_lut(arr, ds)
    x = apply_voi_lut(x, ds)
    # apply_voi_lut maps a window to [0, 2^BitsStored - 1]; bring it to the spec's VOI output range.
    top = float(2 ** int(ds.BitsStored) - 1)
    if "WindowCenter" not in ds and "VOILUTSequence" not in ds:
        # No VOI in the file: the full range of the modality output (as the spec does for voi_policy "dicom").
        lo, hi = float(np.min(x)), float(np.max(x))
        x = (x - lo) / max(hi - lo, 1e-12)
    else:
        x = x / top
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    x = spec.output_min + x * (spec.output_max - spec.output_min)
    return _finish(x, spec)


def user_preprocess_raw(arr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Raw pixels + the model's spec written out in NumPy/OpenCV (rescale, linear window, invert, resize)."""
    import cv2

    x = arr
    if x.ndim == 3 and x.shape[-1] == 3:
        x = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)  # BT.601 luma, as the spec's 3 -> 1 conversion
    x = x.astype(np.float64) * spec.rescale_slope + spec.rescale_intercept
    if spec.voi_function in ("linear", "linear_exact"):
        c, w = spec.window_center, spec.window_width
        if spec.voi_function == "linear":  # PS3.3 C.11.2.1.2.1
            x = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
        else:
            x = np.clip((x - c) / w + 0.5, 0.0, 1.0)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / max(hi - lo, 1e-12)
    if spec.invert:
        x = 1.0 - x
    x = spec.output_min + x * (spec.output_max - spec.output_min)
    return _finish(x, spec)


def _finish(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    import cv2

    x = cv2.resize(x.astype(np.float32), (spec.out_width, spec.out_height), interpolation=cv2.INTER_AREA)
    if spec.normalize == "fixed":
        x = (x - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    elif spec.normalize == "zscore":
        x = (x - x.mean()) / max(float(x.std()), 1e-6)
    elif spec.normalize == "minmax":
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    x = x[None, None].astype(np.float32)
    if spec.out_channels == 3:
        x = np.repeat(x, 3, axis=1)
    return x


# -- user post-processing ------------------------------------------------------------------------------
def user_postprocess(
    task: str, out: np.ndarray, src_hw: tuple[int, int], pixel_spacing_mm: tuple[float, float] | None
) -> Any:
    import cv2

    if task == "classification":
        s = out[0].astype(np.float64)
        e = np.exp(s - s.max())
        p = e / e.sum()
        return int(p.argmax()), p
    mask = out[0].argmax(axis=0).astype(np.uint8)
    mask = cv2.resize(mask, (src_hw[1], src_hw[0]), interpolation=cv2.INTER_NEAREST)
    counts = np.bincount(mask.ravel(), minlength=out.shape[1])
    area = (pixel_spacing_mm[0] * pixel_spacing_mm[1]) if pixel_spacing_mm else 1.0
    return mask, counts * area


# -- configurations ----------------------------------------------------------------------------------
def _user_stages(
    inputs: InputSet, spec: PreprocessSpec, task: str, infer: Callable[[np.ndarray], np.ndarray]
) -> list[tuple[str, Callable[[Any], Any]]]:
    stages: list[tuple[str, Callable[[Any], Any]]] = []
    if inputs.kind == "dicom_file":
        stages.append(("decode", user_decode))
        stages.append(("preprocess", lambda d: (d[1].shape[:2], user_preprocess_dicom(d[0], d[1], spec))))
    else:
        stages.append(("preprocess", lambda a: (a.shape[:2], user_preprocess_raw(a, spec))))
    stages.append(("infer", lambda st: (st[0], infer(st[1]))))
    stages.append(("postprocess", lambda st: user_postprocess(task, st[1], st[0], inputs.pixel_spacing_mm)))
    return stages


def _cycle(inputs: InputSet) -> dict[str, Any]:
    if len(inputs.items) == 1:
        return {"input": inputs.items[0]}
    return {"inputs": inputs.items}


def torch_eager(
    name: str,
    load_module: Callable[[], Any],
    inputs: InputSet,
    spec: PreprocessSpec,
    task: str,
    *,
    threads: int,
    meta: dict[str, Any] | None = None,
) -> Pipeline:
    """(1) `load_module()` returns an eval-mode torch.nn.Module (FP32) taking (N,C,H,W)."""

    def build():
        import torch

        torch.set_num_threads(threads)
        model = load_module().eval()

        def infer(t: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(t)).numpy()

        return _user_stages(inputs, spec, task, infer)

    return Pipeline(
        name,
        build,
        meta={
            "baseline": "pytorch-eager-fp32",
            "input": inputs.description,
            "threads": threads,
            **(meta or {}),
        },
        **_cycle(inputs),
    )


def ort_session(onnx_path: str | Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def onnxruntime_user(
    name: str,
    onnx_path: str | Path,
    inputs: InputSet,
    spec: PreprocessSpec,
    task: str,
    *,
    threads: int,
    meta: dict[str, Any] | None = None,
) -> Pipeline:
    """(2)/(3) ONNX Runtime CPU, all graph optimizations on, same user pre/post-processing."""

    def build():
        sess = ort_session(onnx_path, threads)
        in_name = sess.get_inputs()[0].name
        out_name = sess.get_outputs()[0].name
        return _user_stages(inputs, spec, task, lambda t: sess.run([out_name], {in_name: t})[0])

    return Pipeline(
        name,
        build,
        meta={
            "baseline": "onnxruntime-fp32-user-preprocessing",
            "onnx": str(onnx_path),
            "input": inputs.description,
            "threads": threads,
            **(meta or {}),
        },
        **_cycle(inputs),
    )


def openvino_user(
    name: str,
    model_xml: str | Path,
    inputs: InputSet,
    spec: PreprocessSpec,
    task: str,
    *,
    threads: int,
    meta: dict[str, Any] | None = None,
) -> Pipeline:
    """OpenVINO CPU on an IR (e.g. NNCF INT8) with the same user pre/post-processing: what a user assembles
    from off-the-shelf parts (read_model + compile_model with the LATENCY hint, one stream, `threads`)."""

    def build():
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_xml))
        model.reshape([1, *list(model.inputs[0].get_partial_shape())[1:]])
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                                      "INFERENCE_NUM_THREADS": threads})
        req = compiled.create_infer_request()
        out = compiled.outputs[0]
        return _user_stages(inputs, spec, task, lambda t: req.infer({0: t})[out])

    return Pipeline(
        name,
        build,
        meta={
            "baseline": "openvino-user-preprocessing",
            "model": str(model_xml),
            "input": inputs.description,
            "threads": threads,
            **(meta or {}),
        },
        **_cycle(inputs),
    )


def slicert(
    name: str,
    bundle: str | Path,
    inputs: InputSet,
    *,
    threads: int,
    load_kwargs: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> SessionConfig:
    """(4) SliceRT: engine.load + Session.run on the DICOM path (decoded per call), the cine's
    engine.dicom Slices (pre-decoded, like the user's frames) or the raw simulated arrays."""
    items = inputs.items
    if inputs.kind == "frames":
        items = (
            inputs.slices
        )  # engine.dicom Slices of the same frames: the Session derives the spec from DICOM
    # eligibility="flag": the demo's real chest CR is outside the simulated-lesion model's intended inputs
    # (15-bit detector); the benchmark times the call with its trust checks, it does not refuse it.
    kw = {"threads": threads, "eligibility": "flag", **(load_kwargs or {})}
    cyc = {"input": items[0]} if len(items) == 1 else {"inputs": items}
    return SessionConfig(
        name, Path(bundle), load_kwargs=kw, meta={"input": inputs.description, **(meta or {})}, **cyc
    )



def _session_seg_post(src_hw: tuple[int, int], spec: PreprocessSpec, k: int) -> Callable[[np.ndarray], Any]:
    """The segmentation post-processing Session.run does, on preallocated buffers: argmax at model
    resolution, the cached source map, the source-geometry mask, exact class counts from the small mask."""
    from engine import postprocess as pp

    small = np.empty((spec.out_height, spec.out_width), np.uint8)
    mask = np.empty(src_hw, np.uint8)

    def post(raw: np.ndarray) -> Any:
        pp.argmax_mask_into(small, raw)
        mapping = pp.source_mapping(small.shape, src_hw, spec)
        mapping.to_source(small, out=mask)
        return mapping.class_counts(small, max(k, 2))

    return post

def backend_direct(name: str, bundle: str | Path, x: np.ndarray, *, variant: str, threads: int) -> Pipeline:
    """The calls Session.run wraps, made directly: backend.stage (fused native preprocessing into the
    bound input), backend.infer (ONNX Runtime run_with_iobinding), the same post-processing math.
    Session.run minus this = the Python overhead of the Session API."""

    def build():
        from engine.backends import backend_class
        from engine.bundle import open_bundle

        b = open_bundle(Path(bundle))
        backend = backend_class("onnxruntime")(b, variant=variant, threads=threads)
        backend.activate()
        state["backend"], state["bundle"] = backend, b
        spec = b.spec
        out_name = b.manifest["output"]["name"]
        task = b.task
        k = len(b.labels)
        scores = np.empty(k, np.float32)
        src_hw = x.shape[:2]

        seg_post = _session_seg_post(tuple(src_hw), spec, k) if task != "classification" else None

        def post(outs):
            raw = outs[out_name][0]
            if task == "classification":
                np.subtract(raw, raw.max(), out=scores)
                np.exp(scores, out=scores)
                np.divide(scores, scores.sum(), out=scores)
                return scores
            return seg_post(raw)

        return [
            ("preprocess", lambda a: backend.stage(a, spec, 0)),
            ("infer", lambda _: backend.infer(1)),
            ("postprocess", post),
        ]

    state: dict[str, Any] = {}

    def close():
        if "backend" in state:
            state["backend"].deactivate()
            state["bundle"].close()

    return Pipeline(
        name,
        build,
        input=x,
        close=close,
        meta={
            "what": "backend.stage + backend.infer + post-processing math, called directly (no Session)",
            "variant": variant,
            "threads": threads,
        },
    )


def raw_calls(
    name: str, bundle: str | Path, x: np.ndarray, *, model_file: str, optimized: bool, threads: int
) -> Pipeline:
    """The floor under Session.run, with no SliceRT Python in between: engine.preprocess.preprocess_into
    into an IOBinding-bound array, InferenceSession.run_with_iobinding (same bundle member, same session
    options, a reused RunOptions with gpu_graph_id=-1 as the backend uses), the same post-processing math.
    Session.run minus this = all Python SliceRT adds (Session + backend wrappers)."""
    state: dict[str, Any] = {}

    def build():
        import onnxruntime as ort

        from engine.backends.onnxruntime import session_options
        from engine.bundle import open_bundle
        from engine.preprocess import preprocess_into

        b = open_bundle(Path(bundle))
        state["bundle"] = b
        spec = b.spec
        sess = ort.InferenceSession(
            b.read(model_file),
            session_options(threads, optimized_model=optimized),
            providers=["CPUExecutionProvider"],
        )
        i0, o0 = sess.get_inputs()[0], sess.get_outputs()[0]
        inp = np.zeros((1, *i0.shape[1:]), np.float32)
        probe = sess.run([o0.name], {i0.name: inp})[0]
        out = np.zeros(probe.shape, np.float32)
        binding = sess.io_binding()
        binding.bind_input(i0.name, "cpu", 0, np.float32, list(inp.shape), inp.ctypes.data)
        binding.bind_output(o0.name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        ro = ort.RunOptions()
        ro.add_run_config_entry("gpu_graph_id", "-1")
        run = sess.run_with_iobinding
        task, k = b.task, len(b.labels)
        scores = np.empty(k, np.float32)
        src_hw = x.shape[:2]

        seg_post = _session_seg_post(tuple(src_hw), spec, k) if task != "classification" else None

        def post(_):
            raw = out[0]
            if task == "classification":
                np.subtract(raw, raw.max(), out=scores)
                np.exp(scores, out=scores)
                np.divide(scores, scores.sum(), out=scores)
                return scores
            return seg_post(raw)

        return [
            ("preprocess", lambda a: preprocess_into(inp, a, spec, 0)),
            ("infer", lambda _: run(binding, ro)),
            ("postprocess", post),
        ]

    return Pipeline(
        name,
        build,
        input=x,
        close=lambda: state["bundle"].close() if "bundle" in state else None,
        meta={
            "what": "preprocess_into + run_with_iobinding + post-processing math, no SliceRT Python",
            "model_file": model_file,
            "threads": threads,
        },
    )


def input_agreement(
    inputs: InputSet, spec_user: PreprocessSpec, spec_slicert: PreprocessSpec
) -> dict[str, float]:
    """Max |user - engine.preprocess| on the first input (same pixels, the spec SliceRT derives for them):
    proves the user pipeline does the same work, so no speed-up comes from skipping a step."""
    from engine.preprocess import preprocess

    item = inputs.items[0]
    if inputs.kind == "dicom_file":
        ds, arr = user_decode(item)
        user = user_preprocess_dicom(ds, arr, spec_user)
        ours = preprocess(arr, spec_slicert)
    else:
        user = user_preprocess_raw(item, spec_user)
        ours = preprocess(item, spec_slicert)
    ours = np.asarray(ours, dtype=np.float32).reshape(user.shape)
    return {"max_abs_diff": float(np.max(np.abs(user - ours))), "value_range": float(user.max() - user.min())}


# -- the input sets and configurations of one benchmark run (benchmarks/run_baselines.py, slicert demo) --
CR_FILE = "RG1_UNCR.dcm"
CINE = "ultrasounds/ultrasound-multiframe.dcm"  # in deid-data
TASKS = {"cxr_nodule": "real chest CR", "us_phantom": "real ultrasound cine"}
SHORT = {
    1: "(1) PyTorch eager teacher FP32",
    2: "(2) ORT teacher FP32",
    3: "(3) ORT student FP32",
    4: "(4) SliceRT",
}


def _cine_path() -> Path:
    import deid_data

    return Path(deid_data.__file__).parent / "data" / CINE

def _cr_path() -> str:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(CR_FILE, download=False)
    if p is None:
        raise SystemExit(f"{CR_FILE} not found: pip install pydicom-data")
    return p

def _simulated(dataset: str, count: int) -> InputSet:
    from tools.data import load_dataset

    ds = load_dataset(dataset, fast=True, seed=0)
    images = ds.splits["test"].images[:count]
    return raw_images(
        f"{dataset} test split (simulated)",
        list(images),
        f"{len(images)} simulated {dataset} test-split images {images.shape[1:]} {images.dtype} "
        f"(tools.data, fast=True, seed 0), cycled",
    )

def input_sets(art: "zoo.Artifacts", n_sim: int) -> list[tuple[InputSet, Any]]:
    """(input set, PreprocessSpec SliceRT applies to it) for a task: the real input, then simulated."""
    import engine.dicom

    out = []
    if art.dataset == "cxr_nodule":
        real = cr_file(_cr_path())
        out.append((real, engine.dicom.read(real.items[0]).spec_for(art.spec, "dicom")))
    elif art.dataset == "us_phantom":
        real = cine_frames(_cine_path())
        out.append((real, real.slices[0].spec_for(art.spec, "dicom")))
    sim = _simulated(art.dataset, n_sim)
    out.append((sim, art.spec))
    return out

def slicert_precisions(bundle: Path, precision: str) -> list[str]:
    """`precision`, or with "best": the bundle's int8 and mixed variants (whichever exist), else "best"."""
    if precision != "best":
        return [precision]
    from engine.bundle import open_bundle

    with open_bundle(bundle) as b:
        have = [v for v in ("int8", "mixed") if v in b.variants]
    return have or ["best"]

def configs_for(art: "zoo.Artifacts", inputs: InputSet, threads: int, precision: str) -> list[Any]:
    cfgs = [
        torch_eager(SHORT[1], art.teacher_module, inputs, art.spec, art.task, threads=threads),
        onnxruntime_user(SHORT[2], art.teacher_onnx, inputs, art.spec, art.task, threads=threads),
        onnxruntime_user(SHORT[3], art.student_onnx, inputs, art.spec, art.task, threads=threads),
    ]
    for p in slicert_precisions(art.bundle, precision):
        cfgs.append(
            slicert(f"{SHORT[4]} {p}", art.bundle, inputs, threads=threads, load_kwargs={"precision": p})
        )
    return cfgs


# -- slicert demo, step 6 ------------------------------------------------------------------------------
DEMO_TASKS = ("cxr_nodule", "us_phantom")


def benchmark_demo(out: Path, toolchain: dict[str, Any], *, n: int, warmup: int = 10, threads: int = 1,
                   say: Callable[[str], None] = print) -> dict[str, Any]:
    """The four configurations, interleaved, on each zoo task's REAL input (chest CR decoded per call;
    echo cine frames), using the demo's own toolchain output and bundles. Writes bench/<task>.json,
    .md and .png under `out` and returns the headline rows (p50 ms, p99/p50, speed-ups vs (1) and (2))."""
    from engine.bench import report
    from engine.bench.runner import TOTAL, run_benchmark
    from engine.envinfo import environment
    from tools import zoo

    bench_dir = Path(out) / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    rows: list[list[Any]] = []
    md: list[str] = []
    plots: list[str] = []
    for dataset in DEMO_TASKS:
        art = zoo.from_zoo(dataset, Path(toolchain["out_dir"]), workdir=bench_dir,
                           bundle=Path(out) / "bundles" / f"{dataset}.slicert")
        inputs, _spec = input_sets(art, 1)[0]  # the real input of this task
        say(f"{dataset}: {n} interleaved rounds on {inputs.name}, {threads} thread(s)")
        run = run_benchmark(configs_for(art, inputs, threads, "best"), n=n, warmup=warmup, environment=env,
                            extra_settings={"input": inputs.description, "threads": threads})
        report.write_json(run, bench_dir / f"{dataset}.json", force=True, reference=SHORT[1])
        md.append(report.to_markdown(run, reference=SHORT[1], title=f"{dataset}: {inputs.name}"))
        try:
            plots.append(str(report.write_plot(run, bench_dir / f"{dataset}.png", force=True)))
        except ImportError as exc:  # matplotlib is the optional [plot] extra
            say(f"no plot: {exc}")
        p50 = {c.name: c.stats()[TOTAL]["p50"] for c in run.configurations}
        for c in run.configurations:
            s = c.stats()[TOTAL]
            rows.append([dataset, inputs.name, c.name, f"{s['p50']:.2f}", f"{s['jitter_p99_p50']:.2f}",
                         f"{p50[SHORT[1]] / s['p50']:.1f}x", f"{p50[SHORT[2]] / s['p50']:.1f}x"])
    return {"threads": threads, "n": n, "plot": plots[0] if plots else None, "plots": plots,
            "headline": {"columns": ["task", "input", "pipeline", "p50 ms", "p99/p50", "vs (1)", "vs (2)"],
                         "rows": rows},
            "markdown": "\n\n".join(md)}
