"""HOST-MEMORY EMULATION of the GPU side of SliceRT's TensorRT backend. Tests only; NOT GPU VERIFICATION.

What sits below the `engine.device` seam on a GPU machine (the TensorRT module, engine._native's
streams, events, pinned/device buffers, CUDA graphs and preprocessing kernel) is replaced here by
Python objects working on host memory, so the backend's own control flow (activation, staging,
contexts, enqueue, graph cache, fallbacks, threads, device arrays) runs in CI. The backend code above
the seam is the production code, unchanged. Nothing here says anything about TensorRT's numerics,
kernel timings or a real driver: a pass through this emulation is never evidence that the GPU path
works, and no report may present it as such.

What is emulated, and how faithfully:
  * TensorRT engines are the ONNX file the plan was built from, run by ONNX Runtime (CPU). A "plan"
    is `PLAN_MAGIC + JSON header + ONNX bytes`; deserialization applies TensorRT's portability rules
    (exact version unless version-compatible, compute capability, platform) and returns None otherwise.
  * The ONNX parser refuses what TensorRT's refuses for Q/DQ models: non-zero zero points and INT32
    inputs to DequantizeLinear (onnx-tensorrt: "TensorRT only supports symmetric quantization").
  * IExecutionContext: input shape per context, set_tensor_address per context, execute_async_v3
    enqueued on the stream it is given (reading and writing the emulated device memory when the
    stream runs). Changing a context's input shape invalidates what graphs captured on it (TensorRT:
    "when you change the input shapes, you have to re-capture the graph"): replaying such a graph
    writes NaN into the outputs and records a hazard, the wrong answer made visible. The first
    enqueue after a shape change initializes the context; doing that inside a capture fails the
    capture (execute_async_v3 returns False), as lazy initialization would on a GPU.
  * Streams are queues run when synchronized (so asynchrony is real: a kernel enqueued on one stream
    does not see a write still queued on another unless an event orders them). Events mark a queue
    position; Stream.wait(event) makes the waiting stream run the other stream's queue up to the mark.
  * CUDA graph capture records the launches with their parameters BY VALUE (addresses, shapes, the
    spec's parameters, the LUT table addresses); replay runs the recorded launches. A replayed kernel
    whose LUT table was freed reads freed memory: NaN output and a hazard. Synchronizing, allocating or
    freeing in the capturing thread invalidates the capture, as cudaStreamCaptureModeThreadLocal does.
  * cudaSetDevice is per thread; TensorRT objects bind to the current device; execute_async_v3 fails
    when the current device or the stream's device is not the engine's.
  * TensorRT's single process-wide logger: a second, different logger object is a hazard.
  * Activation memory: `create_runtime_config()` + `set_execution_context_allocation_strategy(USER_MANAGED)`
    gives contexts without scratch memory; execute_async_v3 on one refuses (returns False) until
    `set_device_memory(ptr, size)` gave at least `update_device_memory_size_for_shapes()` bytes. When it
    runs, the scratch must be live device memory and no other context may be using it at that moment
    (a hazard otherwise: two contexts running at once on one buffer corrupt each other on a GPU).
    `EmulatedDevice.runtime_config = False` emulates a TensorRT without IRuntimeConfig (STATIC only).
  * The device argmax (`argmax_mask_cuda_into`): the CUDA kernel's per-pixel loop, run on the host by the
    compiled `argmax_mask_per_pixel_into` when the stream gets there, with the NaN/Inf flag byte.
    `EmulatedDevice.d2h_bytes` lists the size of every device-to-host copy as it executes.

`EmulatedDevice.hazards` collects every misuse seen; tests assert it stays empty.
"""
from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
import json
import threading
import time
import weakref
from collections import deque
from typing import Any

import numpy as np

from engine.errors import CudaError, InputError

PLAN_MAGIC = b"SLICERT-EMULATED-PLAN\n"
DEFAULT_VERSION = "11.4.0.106"
DEVICES = ({"name": "Emulated GPU 0 (host memory, not a GPU)", "compute_capability": (9, 0), "integrated": False},
           {"name": "Emulated GPU 1 (host memory, not a GPU)", "compute_capability": (8, 9), "integrated": False})


class _Heap:
    """Emulated device and pinned memory: allocations at addresses that are never reused."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bases: list[int] = []
        self._blocks: dict[int, tuple[np.ndarray, str, int]] = {}  # base -> (bytes, kind, device)
        self._next = 0x7F00_0000_0000

    def alloc(self, nbytes: int, kind: str, device: int) -> int:
        with self._lock:
            base = self._next
            self._next += (int(nbytes) + 511) // 256 * 256
            self._blocks[base] = (np.zeros(int(nbytes), np.uint8), kind, device)
            bisect.insort(self._bases, base)
            return base

    def free(self, base: int) -> None:
        with self._lock:
            if self._blocks.pop(base, None) is not None:
                self._bases.remove(base)

    def find(self, ptr: int) -> tuple[int, np.ndarray, str, int] | None:
        with self._lock:
            i = bisect.bisect_right(self._bases, ptr) - 1
            if i < 0:
                return None
            base = self._bases[i]
            mem, kind, device = self._blocks[base]
            if ptr >= base + mem.size:
                return None
            return base, mem, kind, device

    def bytes_at(self, ptr: int, nbytes: int) -> np.ndarray | None:
        """A writable uint8 view of [ptr, ptr + nbytes), or None when that is not live memory."""
        hit = self.find(ptr)
        if hit is None:
            return None
        base, mem, _, _ = hit
        off = ptr - base
        if off + nbytes > mem.size:
            return None
        return mem[off:off + nbytes]


class EmulatedDevice:
    """The `engine.device` layer for tests: `native` and `import_tensorrt` below the seam, on host memory."""

    emulated = True
    description = "HOST-MEMORY EMULATION (tests/runtime/fake_device_trt.py): not a GPU, not GPU verification"

    def __init__(self, *, version: str = DEFAULT_VERSION, devices=DEVICES, lean_only: bool = False,
                 machine: str = "x86_64"):
        self.version = version
        self.devices = [dict(d) for d in devices]
        self.lean_only = lean_only
        self._machine = machine
        self.heap = _Heap()
        self.hazards: list[str] = []
        self.trt_calls: list[tuple[str, int, int]] = []  # (call, current device, thread id)
        self.log: list[tuple] = []  # ordered record of stream-level operations, for ordering checks
        self.capturable = True  # False: execute_async_v3 refuses while capturing (a non-capturable engine)
        self.fail_instantiate = False  # True: every graph instantiation fails
        self.fail_deserialize = False  # True: every plan fails to deserialize (e.g. a driver/TensorRT mismatch)
        self.input_dtype: DataType | None = None  # engines report this input dtype instead of the ONNX one
        self.nan_logit = False  # True: every run writes NaN into the first logit of slice 0
        self.runtime_config = True  # False: the TensorRT module has no IRuntimeConfig (STATIC contexts only)
        self.engine_memory_short = 0  # bytes device_memory_size_v2 under-reports (a context then needs more)
        self.d2h_bytes: list[int] = []  # every device-to-host copy, in bytes, as it executes
        self._scratch_in_use: set[int] = set()
        self.counts: dict[str, int] = {}
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._streams: dict[int, EmulatedStream] = {}
        self._handles = itertools.count(0x5000)
        self._legacy = {}
        self._logger = None
        self.native = _Native(self)
        self.trt = _make_trt_module(self)

    # -- the engine.device interface ----------------------------------------------------------------
    def has_module(self, name: str) -> bool:
        return name == "tensorrt_lean" or (name == "tensorrt" and not self.lean_only)

    def import_tensorrt(self, *, builder: bool):
        if builder and self.lean_only:
            raise ImportError("No module named 'tensorrt' (emulated: only tensorrt_lean is installed)")
        return self.trt

    def tensorrt_version(self) -> str:
        return self.version

    def machine(self) -> str:
        return self._machine

    # -- helpers for the emulated objects -------------------------------------------------------------
    def hazard(self, what: str) -> None:
        with self._lock:
            self.hazards.append(what)

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def record(self, *entry) -> None:
        with self._lock:
            self.log.append(entry)

    @property
    def current_device(self) -> int:
        return getattr(self._tls, "device", 0)

    def capturing_here(self) -> list:
        return getattr(self._tls, "capturing", [])

    def unsafe_in_capture(self, what: str) -> None:
        """cudaStreamCaptureModeThreadLocal: this call in the capturing thread invalidates the capture."""
        for stream in list(self.capturing_here()):
            if stream.capture is not None:
                stream.capture.invalid = f"{what} while capturing"

    def trt_call(self, name: str) -> int:
        dev = self.current_device
        with self._lock:
            self.trt_calls.append((name, dev, threading.get_ident()))
        return dev

    def stream(self, handle: int) -> EmulatedStream:
        if handle in (1, 2):  # cudaStreamLegacy / cudaStreamPerThread: the current device's default stream
            dev = self.current_device
            with self._lock:
                s = self._legacy.get(dev)
            if s is None:
                s = EmulatedStream(self, dev, legacy=True)
                with self._lock:
                    self._legacy[dev] = s
            return s
        with self._lock:
            s = self._streams.get(handle)
        if s is None:
            raise CudaError(f"cudaErrorInvalidResourceHandle: stream handle {handle:#x} is not a live stream")
        return s

    def producer_array(self, pixels: np.ndarray, *, device: int = 0, stream: str | int | None = "own",
                       version: int = 3, delay_write: bool = True) -> EmulatedDeviceArray:
        """A caller-owned device array (like CuPy's) whose pixels are written by an operation still queued
        on the producer's stream when SliceRT gets it: reading it without synchronizing sees zeros."""
        return EmulatedDeviceArray(self, pixels, device=device, stream=stream, version=version, delay_write=delay_write)

    def check_logger(self, logger) -> None:
        with self._lock:
            if self._logger is None:
                self._logger = logger
                return
            first = self._logger
        if logger is not first:
            self.hazard("a second TensorRT logger was passed; TensorRT keeps one per process and ignores it")


# -- streams, events, memory, graphs (engine._native's API) --------------------------------------------
class EmulatedStream:
    def __init__(self, dev: EmulatedDevice, device: int, legacy: bool = False):
        self._dev = dev
        self.device = device
        self.legacy = legacy
        self._ops: deque = deque()
        self._lock = threading.RLock()
        self.capture: EmulatedGraph | None = None
        self.handle = 1 if legacy else next(dev._handles)
        self._done = 0  # operations completed so far
        self._queued = 0
        if not legacy:
            with dev._lock:
                dev._streams[self.handle] = self

    def enqueue(self, op, what: str) -> None:
        if self.capture is not None:
            self.capture.ops.append((op, what))
            return
        with self._lock:
            self._ops.append(op)
            self._queued += 1

    def run_until(self, mark: int) -> None:
        with self._lock:
            while self._done < mark and self._ops:
                op = self._ops.popleft()
                op()
                self._done += 1

    def mark(self) -> int:
        with self._lock:
            return self._queued

    def synchronize(self) -> None:
        if self.capture is not None:
            self.capture.invalid = "cudaStreamSynchronize on the capturing stream"
            raise CudaError("cudaErrorStreamCaptureUnsupported: synchronize while capturing")
        self._dev.unsafe_in_capture("cudaStreamSynchronize")
        self.run_until(self.mark())

    def wait(self, event: EmulatedEvent) -> None:
        target = event.at
        self._dev.record("wait", self.handle, id(event))
        if target is None:
            return
        stream, mark = target
        if stream is self:
            return
        self.enqueue(lambda: stream.run_until(mark), "wait")

    @property
    def capturing(self) -> bool:
        return self.capture is not None

    def close(self) -> None:
        with self._dev._lock:
            self._dev._streams.pop(self.handle, None)


class EmulatedEvent:
    def __init__(self, timing: bool = True, device: int = 0, *, _dev: EmulatedDevice):
        self._dev = _dev
        self.timing = timing
        self.device = device
        self.at: tuple[EmulatedStream, int] | None = None
        self.time: float | None = None

    def record(self, stream: EmulatedStream) -> None:
        if stream.capture is not None:
            stream.enqueue(lambda: None, "event")  # a dependency node: records no time at replay
            self.at = None
            self.time = None
            return
        self.time = None
        stream.enqueue(self._hit, "event")
        self.at = (stream, stream.mark())
        self._dev.record("record", stream.handle, id(self))

    def record_on(self, stream_handle: int) -> None:
        if stream_handle == 0:
            raise InputError("Event.record_on: stream handle 0 is ambiguous (CAI v3 disallows it)")
        self.record(self._dev.stream(int(stream_handle)))

    def _hit(self) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        if self.at is not None:
            self.at[0].run_until(self.at[1])

    def query(self) -> bool:
        return self.at is None or self.at[0]._done >= self.at[1]

    def elapsed_ms(self, start: EmulatedEvent) -> float:
        if not self.timing or not start.timing:
            raise CudaError("cudaErrorInvalidResourceHandle: elapsed time of an event created without timing")
        if self.time is None or start.time is None:
            raise CudaError("cudaErrorNotReady: elapsed_ms of an event that has not completed")
        return (self.time - start.time) * 1e3


class EmulatedDeviceBuffer:
    def __init__(self, nbytes: int, device: int = 0, *, _dev: EmulatedDevice):
        if nbytes <= 0:
            raise InputError("DeviceBuffer: nbytes must be > 0")
        _dev.native._require(device)
        _dev.unsafe_in_capture("cudaMalloc")
        self._dev = _dev
        self.nbytes = int(nbytes)
        self.device = device
        self._ptr = _dev.heap.alloc(nbytes, "device", device)
        _dev.count("cudaMalloc")

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise InputError("DeviceBuffer has been freed")
        return self._ptr

    def _check(self, offset: int, n: int, what: str) -> None:
        if offset + n > self.nbytes:
            raise InputError(f"{what}: {n} bytes at offset {offset} exceed the {self.nbytes}-byte device buffer")

    def copy_from_host(self, src: np.ndarray, stream: EmulatedStream | None = None, offset: int = 0) -> None:
        if not src.flags.c_contiguous:
            raise InputError("DeviceBuffer.copy_from_host: host array must be C-contiguous")
        self._check(offset, src.nbytes, "DeviceBuffer.copy_from_host")
        dst = self.ptr + offset
        pinned = self._dev.native._is_pinned(src)
        # From pageable memory the runtime stages the bytes before returning; from pinned memory the
        # DMA reads them when the stream gets there.
        data = src if pinned else np.array(src, copy=True)
        heap = self._dev.heap

        def op(data=data, dst=dst, n=src.nbytes):
            out = heap.bytes_at(dst, n)
            if out is None:
                self._dev.hazard(f"H2D copy into freed device memory {dst:#x}")
                return
            out[...] = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        if stream is None:
            op()
        else:
            stream.enqueue(op, "h2d")

    def copy_to_host(self, dst: np.ndarray, stream: EmulatedStream | None = None, offset: int = 0) -> None:
        if not dst.flags.c_contiguous or not dst.flags.writeable:
            raise InputError("DeviceBuffer.copy_to_host: host array must be C-contiguous and writable")
        self._check(offset, dst.nbytes, "DeviceBuffer.copy_to_host")
        src = self.ptr + offset
        heap = self._dev.heap
        flat = dst.reshape(-1).view(np.uint8)

        def op(src=src, n=dst.nbytes):
            data = heap.bytes_at(src, n)
            if data is None:
                self._dev.hazard(f"D2H copy from freed device memory {src:#x}")
                return
            flat[...] = data
            with self._dev._lock:
                self._dev.d2h_bytes.append(n)
        if stream is None:
            op()
        else:
            stream.enqueue(op, "d2h")

    def memset(self, value: int, stream: EmulatedStream | None = None) -> None:
        heap, ptr, n = self._dev.heap, self.ptr, self.nbytes

        def op():
            heap.bytes_at(ptr, n)[...] = value
        if stream is None:
            op()
        else:
            stream.enqueue(op, "memset")

    def free(self) -> None:
        if self._ptr is not None:
            self._dev.unsafe_in_capture("cudaFree")
            self._dev.heap.free(self._ptr)
            self._ptr = None

    def __del__(self):
        try:
            self.free()
        except Exception:  # noqa: BLE001  (teardown at interpreter exit)
            pass


class EmulatedPinnedBuffer:
    def __init__(self, nbytes: int, *, _dev: EmulatedDevice):
        if nbytes <= 0:
            raise InputError("PinnedBuffer: nbytes must be > 0")
        _dev.unsafe_in_capture("cudaHostAlloc")
        self._dev = _dev
        self.nbytes = int(nbytes)
        self.ptr = _dev.heap.alloc(nbytes, "pinned", -1)
        self._mem = _dev.heap.bytes_at(self.ptr, self.nbytes)
        self._root = self._mem.base  # the heap block: views of this buffer end there
        _dev.native._pinned.add(id(self._root))

    def array(self, dtype, shape) -> np.ndarray:
        dt = np.dtype(dtype)
        n = dt.itemsize * int(np.prod(shape))
        if n > self.nbytes:
            raise InputError(f"PinnedBuffer.array: {n} bytes requested from a {self.nbytes}-byte buffer")
        return self._mem[:n].view(dt).reshape(shape)

    def __del__(self):
        try:
            self._dev.unsafe_in_capture("cudaFreeHost")
            self._dev.native._pinned.discard(id(self._root))
            self._dev.heap.free(self.ptr)
        except Exception:  # noqa: BLE001
            pass


class EmulatedGraph:
    def __init__(self, *, _dev: EmulatedDevice):
        self._dev = _dev
        self.ops: list = []
        self.invalid: str | None = None
        self.ready = False
        self._stream: EmulatedStream | None = None

    def begin_capture(self, stream: EmulatedStream) -> None:
        if stream.capture is not None:
            raise CudaError("cudaErrorIllegalState: the stream is already capturing")
        self.ops, self.invalid, self.ready = [], None, False
        stream.capture = self
        self._stream = stream
        if not hasattr(self._dev._tls, "capturing"):
            self._dev._tls.capturing = []
        self._dev._tls.capturing.append(stream)
        self._dev.count("begin_capture")

    def _leave(self, stream: EmulatedStream) -> None:
        stream.capture = None
        here = self._dev.capturing_here()
        if stream in here:
            here.remove(stream)

    def end_capture(self, stream: EmulatedStream) -> None:
        if stream.capture is not self:
            raise CudaError("cudaErrorIllegalState: end_capture on a stream this graph is not capturing")
        self._leave(stream)
        if self.invalid:
            self.ops = []
            raise CudaError(f"cudaErrorStreamCaptureInvalidated: {self.invalid}")
        if self._dev.fail_instantiate:
            self.ops = []
            raise CudaError("cudaErrorGraphExecUpdateFailure: cudaGraphInstantiate failed (emulated)")
        self.ready = True
        self._dev.count("graph_instantiated")

    def abort_capture(self, stream: EmulatedStream) -> None:
        if stream.capture is self:
            self._leave(stream)
        self.ops, self.ready = [], False
        self._dev.count("abort_capture")

    def launch(self, stream: EmulatedStream) -> None:
        if not self.ready:
            raise InputError("CudaGraph.launch: nothing captured (call begin_capture/end_capture first)")
        ops = list(self.ops)

        def replay():
            for op, _what in ops:
                op()
        self._dev.count("graph_launch")
        stream.enqueue(replay, "graph")


class _Native:
    """engine._native's CUDA-facing API, emulated; the CPU kernels are the real compiled ones."""

    def __init__(self, dev: EmulatedDevice):
        self._dev = dev
        self._pinned: set[int] = set()  # id() of the heap blocks of live pinned buffers
        self._tables: dict[int, tuple[weakref.ref, dict[int, tuple[int | None, int | None]]]] = {}
        self._tables_lock = threading.Lock()

    # classes, with the device bound
    def Stream(self, device: int = 0):  # noqa: N802  (mirrors the native class name)
        self._require(device)
        return EmulatedStream(self._dev, device)

    def Event(self, timing: bool = True, device: int = 0):  # noqa: N802
        self._require(device)
        return EmulatedEvent(timing, device, _dev=self._dev)

    def DeviceBuffer(self, nbytes: int, device: int = 0):  # noqa: N802
        return EmulatedDeviceBuffer(nbytes, device, _dev=self._dev)

    def PinnedBuffer(self, nbytes: int):  # noqa: N802
        return EmulatedPinnedBuffer(nbytes, _dev=self._dev)

    def CudaGraph(self):  # noqa: N802
        return EmulatedGraph(_dev=self._dev)

    # device queries
    def cuda_compiled(self) -> bool:
        return True

    def cuda_devices(self):
        return len(self._dev.devices), ""

    def cuda_device_properties(self, device: int = 0) -> dict:
        if not 0 <= device < len(self._dev.devices):
            return {"error": "cudaErrorInvalidDevice"}
        d = self._dev.devices[device]
        return {"name": d["name"], "compute_capability": tuple(d["compute_capability"]),
                "integrated": d["integrated"], "total_memory_bytes": 1 << 34, "multiprocessors": 1}

    def _require(self, device: int) -> None:
        if not 0 <= device < len(self._dev.devices):
            raise InputError(f"CUDA device {device} does not exist ({len(self._dev.devices)} visible)")

    def set_device(self, device: int) -> None:
        self._require(device)
        self._dev._tls.device = device

    def device_synchronize(self, device: int) -> None:
        self._require(device)
        self._dev.record("device_synchronize", device)
        with self._dev._lock:
            streams = [s for s in self._dev._streams.values() if s.device == device]
            streams += [s for d, s in self._dev._legacy.items() if d == device]
        for s in streams:
            if s.capture is None:
                s.run_until(s.mark())

    def pointer_device(self, ptr: int):
        hit = self._dev.heap.find(int(ptr))
        if hit is None or hit[2] == "pinned":
            return ("host", -1)
        return (hit[2], hit[3])

    def _is_pinned(self, a: np.ndarray) -> bool:
        base = a
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        return id(base) in self._pinned

    # LUT tables: emulated device copies tied to the native spec's lifetime
    def _spec_tables(self, native_spec, device: int, capturing: bool):
        key = id(native_spec)
        with self._tables_lock:
            hit = self._tables.get(key)
            if hit is not None and hit[0]() is native_spec and device in hit[1]:
                return hit[1][device]
        ps = _python_spec(native_spec)
        has_lut = ps is not None and (ps.modality_lut is not None or ps.voi_lut is not None)
        if capturing and has_lut:
            raise InputError(f"preprocess_cuda_into: the spec's LUT tables are not on device {device} yet; call "
                             f"cuda_prepare(spec) or run once before capturing a CUDA graph")
        tables = (None, None)
        if has_lut:
            heap = self._dev.heap
            mod = heap.alloc(4 * (0 if ps.modality_lut is None else len(ps.modality_lut)) + 4, "device", device)
            voi = heap.alloc(4 * (0 if ps.voi_lut is None else len(ps.voi_lut)) + 4, "device", device)
            tables = (mod, voi)
            weakref.finalize(native_spec, heap.free, mod)
            weakref.finalize(native_spec, heap.free, voi)
        with self._tables_lock:
            entry = self._tables.get(key)
            if entry is None or entry[0]() is not native_spec:
                entry = (weakref.ref(native_spec), {})
                self._tables[key] = entry
            entry[1][device] = tables
        return tables

    def cuda_prepare(self, spec, device: int = 0) -> None:
        self._require(device)
        self._spec_tables(spec, device, False)

    def preprocess_cuda_into(self, out, x, shape, strides, dtype, spec, stream, batch_index=0,
                             check_finite=True) -> None:
        from engine import _native as real
        from engine.preprocess import prepared

        dev = self._dev
        out_ptr = out.ptr if isinstance(out, EmulatedDeviceBuffer) else int(out)
        src_ptr = x.ptr if isinstance(x, EmulatedDeviceBuffer) else int(x)
        shape, strides = tuple(int(v) for v in shape), tuple(int(v) for v in strides)
        dt = np.dtype(dtype)
        capturing = stream.capture is not None
        if check_finite and dt == np.float32 and capturing:
            raise InputError("preprocess_cuda_into: the float32 finite-value check reads its result back, which a "
                             "CUDA graph cannot; pass check_finite=False while capturing")
        tables = self._spec_tables(spec, stream.device, capturing)
        ps = _python_spec(spec)
        if ps is None:
            raise InputError("emulation: preprocess_cuda_into got a native spec with no live PreprocessSpec")
        snapshot = dataclasses.replace(ps)  # the kernel's parameters, by value
        out_shape = (1, ps.out_channels, ps.out_height, ps.out_width) if ps.layout == "NCHW" else (
            1, ps.out_height, ps.out_width, ps.out_channels)
        out_dt = np.dtype(ps.out_dtype)
        slot = int(np.prod(out_shape)) * out_dt.itemsize
        extent = sum((n - 1) * abs(s) for n, s in zip(shape, strides)) + dt.itemsize
        heap = dev.heap
        dev.record("preprocess", stream.handle, src_ptr)

        def op():
            if any(t is not None and heap.find(t) is None for t in tables):
                dev.hazard("a preprocessing kernel read LUT tables that were freed (stale graph after spec churn)")
                dst = heap.bytes_at(out_ptr + batch_index * slot, slot)
                dst.view(out_dt)[...] = np.nan if out_dt.kind == "f" else 0
                return
            src = heap.bytes_at(src_ptr, extent)
            if src is None:
                dev.hazard(f"a preprocessing kernel read unmapped memory at {src_ptr:#x}")
                return
            view = np.lib.stride_tricks.as_strided(src.view(dt), shape=shape, strides=strides)
            result = np.empty(out_shape, out_dt)
            real.preprocess_into(result, np.ascontiguousarray(view), prepared(snapshot), 0)
            dst = heap.bytes_at(out_ptr + batch_index * slot, slot)
            if dst is None:
                dev.hazard("a preprocessing kernel wrote outside the engine input buffer")
                return
            dst[...] = result.reshape(-1).view(np.uint8)
        stream.enqueue(op, "preprocess")
        if check_finite and dt == np.float32:
            stream.synchronize()
            src = heap.bytes_at(src_ptr, extent)
            view = np.lib.stride_tricks.as_strided(src.view(dt), shape=shape, strides=strides)
            if not np.isfinite(view).all():
                raise InputError("input pixels contain NaN or Inf; SliceRT refuses non-finite pixels")

    def argmax_mask_cuda_into(self, out, logits, shape, dtype, stream, nonfinite=None) -> None:
        """The device argmax, by value: pointers, shape and dtype are fixed at enqueue (or capture)."""
        from engine import _native as real

        shape = tuple(int(v) for v in shape)
        if len(shape) != 3 or not 1 <= shape[0] <= 256 or shape[1] < 1 or shape[2] < 1:
            raise InputError("argmax_mask_cuda_into: shape must be (K, H, W) with 1 <= K <= 256 and H, W >= 1")
        if dtype not in ("float32", "float16"):
            raise InputError(f"argmax_mask_cuda_into: logits dtype must be float32 or float16, got {dtype}")
        dt = np.dtype(dtype)
        k, h, w = shape
        ptrs = []
        for obj, n, what in ((logits, k * h * w * dt.itemsize, "logits"), (out, h * w, "mask")):
            if isinstance(obj, EmulatedDeviceBuffer):
                if n > obj.nbytes:
                    raise InputError(f"argmax_mask_cuda_into: the {what} exceed the device buffer")
                ptrs.append(obj.ptr)
            else:
                ptrs.append(int(obj))
        src_ptr, dst_ptr = ptrs
        flag_ptr = None if nonfinite is None else (
            nonfinite.ptr if isinstance(nonfinite, EmulatedDeviceBuffer) else int(nonfinite))
        if src_ptr % dt.itemsize:
            raise InputError("argmax_mask_cuda_into: logits pointer is not aligned to its elements")
        dev, heap = self._dev, self._dev.heap
        dev.record("argmax", stream.handle, src_ptr)

        def op():
            src = heap.bytes_at(src_ptr, k * h * w * dt.itemsize)
            dst = heap.bytes_at(dst_ptr, h * w)
            flag = None if flag_ptr is None else heap.bytes_at(flag_ptr, 1)
            if src is None or dst is None or (flag_ptr is not None and flag is None):
                dev.hazard(f"the argmax kernel touched unmapped memory (logits {src_ptr:#x}, mask {dst_ptr:#x})")
                return
            mask = np.empty((h, w), np.uint8)
            finite = real.argmax_mask_per_pixel_into(mask, src.view(dt).reshape(k, h, w).copy())
            dst[...] = mask.reshape(-1)
            if flag is not None:
                flag[0] = 0 if finite else 1
        stream.enqueue(op, "argmax")
        dev.count("argmax_kernel")


def _python_spec(native_spec):
    """The PreprocessSpec a native spec was prepared from (engine.preprocess caches them by spec id)."""
    from engine import preprocess

    for ref, native in list(preprocess._prepared.values()):
        if native is native_spec:
            return ref()
    return None


class EmulatedDeviceArray:
    """A caller-owned device array exposing __cuda_array_interface__ (v3 with a producer stream, or v2)."""

    def __init__(self, dev: EmulatedDevice, pixels: np.ndarray, *, device: int, stream, version: int,
                 delay_write: bool):
        pixels = np.ascontiguousarray(pixels)
        self._dev = dev
        self._buf = EmulatedDeviceBuffer(pixels.nbytes, device, _dev=dev)
        self.producer = EmulatedStream(dev, device) if stream == "own" else None
        self._stream_value = self.producer.handle if self.producer is not None else stream
        self._version = version
        self._shape, self._typestr = pixels.shape, pixels.dtype.str
        data = pixels.copy()
        heap, ptr = dev.heap, self._buf.ptr

        def write():
            heap.bytes_at(ptr, data.nbytes)[...] = data.reshape(-1).view(np.uint8)
        if delay_write and self.producer is not None:
            self.producer.enqueue(write, "producer-write")  # still queued when SliceRT reads it
        elif delay_write:
            dev.stream(1).enqueue(write, "producer-write")  # on the legacy default stream
        else:
            write()

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return np.dtype(self._typestr)

    @property
    def __cuda_array_interface__(self):
        cai = {"shape": self._shape, "typestr": self._typestr, "data": (self._buf.ptr, False), "strides": None,
               "version": self._version}
        if self._version >= 3:
            cai["stream"] = self._stream_value
        return cai


# -- the TensorRT module ----------------------------------------------------------------------------
class _Severity(enum.Enum):  # str() gives "Severity.INFO", as TensorRT's pybind11 enum does
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4

    def __int__(self):
        return self.value


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
                2: DataType.UINT8}


class AllocationStrategy(enum.IntEnum):  # trt.ExecutionContextAllocationStrategy
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


_SCRATCH_PER_ITEM = 4096  # emulated activation bytes per batch item


class _RuntimeConfig:
    def __init__(self):
        self.strategy = AllocationStrategy.STATIC

    def set_execution_context_allocation_strategy(self, strategy=AllocationStrategy.STATIC):
        self.strategy = AllocationStrategy(int(strategy))

    def get_execution_context_allocation_strategy(self):
        return self.strategy


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


def _make_trt_module(dev: EmulatedDevice):
    import types

    trt = types.SimpleNamespace()
    trt.__version__ = dev.version
    trt.DataType = DataType
    trt.TensorIOMode = TensorIOMode
    trt.nptype = lambda t: _NP[DataType(t)]
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel",
                                                  {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2})
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"GPU_FALLBACK": 3, "TF32": 6, "VERSION_COMPATIBLE": 9,
                                                   "EXCLUDE_LEAN_RUNTIME": 10})
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    if dev.runtime_config:
        trt.ExecutionContextAllocationStrategy = AllocationStrategy

    class ILogger:
        Severity = _Severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (_Severity.INTERNAL_ERROR, _Severity.ERROR, _Severity.WARNING,
                                                         _Severity.INFO, _Severity.VERBOSE)

        def __init__(self):
            pass

        def log(self, severity, msg):
            pass

    class Logger(ILogger):
        def __init__(self, min_severity=_Severity.WARNING):
            super().__init__()
            self.min_severity = min_severity

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.Runtime = lambda logger: _Runtime(dev, logger)
    trt.Builder = lambda logger: _Builder(dev, logger)
    trt.OnnxParser = lambda network, logger: _Parser(dev, network, logger)
    return trt


def _log(logger, severity, msg):
    try:
        logger.log(severity, msg)
    except Exception:  # noqa: BLE001
        pass


class _Runtime:
    def __init__(self, dev: EmulatedDevice, logger):
        dev.check_logger(logger)
        dev.trt_call("Runtime")
        self._dev, self._logger = dev, logger
        self.engine_host_code_allowed = False

    def load_runtime(self, path: str):
        self._dev.trt_call("load_runtime")
        return _Runtime(self._dev, self._logger)

    def deserialize_cuda_engine(self, plan):
        dev = self._dev
        device = dev.trt_call("deserialize_cuda_engine")
        data = bytes(plan)
        if not data.startswith(PLAN_MAGIC) or dev.fail_deserialize:
            _log(self._logger, _Severity.ERROR, "IRuntime::deserializeCudaEngine: the serialized engine is corrupt")
            return None
        try:
            header_len = int.from_bytes(data[len(PLAN_MAGIC):len(PLAN_MAGIC) + 4], "little")
            start = len(PLAN_MAGIC) + 4
            header = json.loads(data[start:start + header_len])
            onnx_bytes = data[start + header_len:]
        except ValueError:
            _log(self._logger, _Severity.ERROR, "the serialized engine is corrupt")
            return None
        props = dev.devices[device]
        why = None
        if header["version_compatible"]:
            if not self.engine_host_code_allowed:
                why = "a version-compatible plan needs engine_host_code_allowed"
            elif header["trt_version"].split(".")[0] != dev.version.split(".")[0]:
                why = "version-compatible plans run only within one TensorRT major version"
        elif header["trt_version"] != dev.version:
            why = f"the plan was built by TensorRT {header['trt_version']}, this is {dev.version}"
        cc = tuple(props["compute_capability"])
        if header["hardware_compat"] == "ampere+":
            if cc < (8, 0) or props["integrated"]:
                why = why or "Ampere+ plans need an Ampere-or-newer discrete GPU"
        elif tuple(header["compute_capability"]) != cc:
            why = why or f"the plan is for sm_{''.join(map(str, header['compute_capability']))}"
        if header["machine"] != dev.machine():
            why = why or "serialized engines are not portable across platforms"
        if why:
            _log(self._logger, _Severity.ERROR, f"deserializeCudaEngine: {why}")
            return None
        return _Engine(dev, onnx_bytes, header, device)


class _Engine:
    def __init__(self, dev: EmulatedDevice, onnx_bytes: bytes, header: dict, device: int):
        import onnx
        import onnxruntime as ort

        self._dev, self.device, self.header = dev, device, header
        model = onnx.load_from_string(onnx_bytes)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        inits = {i.name for i in model.graph.initializer}
        self._io = []  # (name, mode, dtype, shape with -1 for dynamic dims)
        for vi, mode in [*((v, TensorIOMode.INPUT) for v in model.graph.input if v.name not in inits),
                         *((v, TensorIOMode.OUTPUT) for v in model.graph.output)]:
            t = vi.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            dtype = _ONNX_TO_TRT[t.elem_type]
            if mode == TensorIOMode.INPUT and dev.input_dtype is not None:
                dtype = dev.input_dtype
            self._io.append((vi.name, mode, dtype, shape))
        self.num_io_tensors = len(self._io)
        self.num_layers = len(model.graph.node)
        # The largest scratch any shape of the profile needs (TensorRT: the max across profiles).
        self.device_memory_size_v2 = max(
            0, _SCRATCH_PER_ITEM * int(header.get("max_batch", 1)) - dev.engine_memory_short)

    @property
    def create_runtime_config(self):
        if not self._dev.runtime_config:
            raise AttributeError("'ICudaEngine' object has no attribute 'create_runtime_config' (emulated older "
                                 "TensorRT)")
        return lambda: _RuntimeConfig()

    def _find(self, name):
        for e in self._io:
            if e[0] == name:
                return e
        raise KeyError(name)

    def get_tensor_name(self, i):
        return self._io[i][0]

    def get_tensor_mode(self, name):
        return self._find(name)[1]

    def get_tensor_dtype(self, name):
        return self._find(name)[2]

    def get_tensor_shape(self, name):
        return self._find(name)[3]

    def create_execution_context(self, *args):
        """Overloads as in TensorRT 10/11: (strategy=STATIC) or (runtime_config)."""
        device = self._dev.trt_call("create_execution_context")
        if device != self.device:
            self._dev.hazard(f"execution context created with device {device} current; the engine is on device "
                             f"{self.device}")
        if len(args) > 1:
            raise TypeError("create_execution_context(): incompatible function arguments")
        arg = args[0] if args else AllocationStrategy.STATIC
        if isinstance(arg, _RuntimeConfig):
            strategy = arg.strategy
        elif self._dev.runtime_config and isinstance(arg, (AllocationStrategy, int)):
            strategy = AllocationStrategy(int(arg))
        elif not args:
            strategy = AllocationStrategy.STATIC
        else:
            raise TypeError("create_execution_context(): incompatible function arguments")
        if strategy == AllocationStrategy.STATIC:
            self._dev.count("static_context_memory")  # TensorRT allocates this context's own scratch
        return _Context(self, strategy)

    def create_engine_inspector(self):
        engine = self

        class _Inspector:
            def get_engine_information(self, fmt):
                return json.dumps({"Layers": [n.name for n in []], "emulated": True, "io": [e[0] for e in engine._io]})
        return _Inspector()


class _Context:
    def __init__(self, engine: _Engine, strategy: AllocationStrategy = AllocationStrategy.STATIC):
        self._engine = engine
        self._dev = engine._dev
        self.strategy = strategy
        self.device_memory: tuple[int, int] | None = None  # (ptr, size) given by set_device_memory
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.epoch = 0
        self.needs_init = True
        self._in_use = threading.Lock()

    def set_input_shape(self, name, shape):
        self._dev.trt_call("set_input_shape")
        shape = tuple(int(v) for v in shape)
        _, mode, _, decl = self._engine._find(name)
        hi = int(self._engine.header.get("max_batch", 1))
        if mode != TensorIOMode.INPUT or len(shape) != len(decl) or not 1 <= shape[0] <= hi or any(
                d != -1 and d != s for d, s in zip(decl[1:], shape[1:])):
            return False
        if self.shapes.get(name) != shape:
            self.shapes[name] = shape
            self.epoch += 1  # internal state changed: graphs captured before are stale
            self.needs_init = True
        return True

    def _scratch_need(self) -> int:
        batch = next(iter(self.shapes.values()))[0] if self.shapes else int(self._engine.header.get("max_batch", 1))
        return _SCRATCH_PER_ITEM * batch

    def update_device_memory_size_for_shapes(self):
        self._dev.trt_call("update_device_memory_size_for_shapes")
        return self._scratch_need()

    def set_device_memory(self, memory, size):
        self._dev.trt_call("set_device_memory")
        if self.strategy != AllocationStrategy.USER_MANAGED:
            self._dev.hazard("set_device_memory on a context that was not created USER_MANAGED")
        self.device_memory = (int(memory), int(size))

    def get_tensor_shape(self, name):
        _, mode, _, decl = self._engine._find(name)
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, decl)
        batch = next(iter(self.shapes.values()))[0]
        return (batch, *decl[1:])

    def set_tensor_address(self, name, ptr):
        self._dev.trt_call("set_tensor_address")
        try:
            self._engine._find(name)
        except KeyError:
            return False
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle):
        dev = self._dev
        device = dev.trt_call("execute_async_v3")
        if not self._in_use.acquire(blocking=False):
            dev.hazard("one IExecutionContext used by two threads at once")
            return False
        try:
            stream = dev.stream(int(stream_handle))
            if device != self._engine.device or stream.device != self._engine.device:
                dev.hazard(f"execute_async_v3 with device {device} current and a stream of device {stream.device}; "
                           f"the engine is on device {self._engine.device}")
                return False
            if any(e[0] not in self.addresses for e in self._engine._io):
                return False
            if self.strategy == AllocationStrategy.USER_MANAGED and (
                    self.device_memory is None or self.device_memory[1] < self._scratch_need()):
                return False  # TensorRT: "the user must provide device memory" (logged as an error)
            if stream.capture is not None:
                if self.needs_init or not dev.capturable:
                    stream.capture.invalid = "TensorRT enqueue not capturable"
                    return False
            else:
                self.needs_init = False
            launch = self._launch_params()
            stream.enqueue(lambda: self._run(*launch), "trt")
            return True
        finally:
            self._in_use.release()

    def _launch_params(self):
        io = [(e[0], e[1], np.dtype(_NP[e[2]]), self.get_tensor_shape(e[0])) for e in self._engine._io]
        scratch = None
        if self.strategy == AllocationStrategy.USER_MANAGED:
            scratch = (self.device_memory[0], self._scratch_need())
        return io, dict(self.addresses), self.epoch, scratch

    def _run(self, io, addresses, epoch, scratch):
        dev = self._dev
        if scratch is None:
            self._execute(io, addresses, epoch)
            return
        ptr, need = scratch
        with dev._lock:
            shared = ptr in dev._scratch_in_use
            dev._scratch_in_use.add(ptr)
        if shared:
            dev.hazard("two execution contexts ran at once on the same activation memory")
        try:
            mem = dev.heap.bytes_at(ptr, need)
            if mem is None:
                dev.hazard(f"an execution context's activation memory {ptr:#x} is not live device memory")
            else:
                mem[...] = 0xA5  # the scratch is overwritten by every run, as TensorRT's layers do
            self._execute(io, addresses, epoch)
        finally:
            if not shared:
                with dev._lock:
                    dev._scratch_in_use.discard(ptr)

    def _execute(self, io, addresses, epoch):
        heap, dev = self._dev.heap, self._dev
        stale = epoch != self.epoch
        feed = {}
        for name, mode, dt, shape in io:
            if mode == TensorIOMode.INPUT:
                n = int(np.prod(shape)) * dt.itemsize
                raw = heap.bytes_at(addresses[name], n)
                if raw is None:
                    dev.hazard(f"engine input {name!r} points at unmapped memory")
                    return
                feed[name] = raw.view(dt).reshape(shape).copy()
        if stale:
            dev.hazard("a CUDA graph captured before the context's input shape changed was replayed")
        outs = None if stale else self._engine.session.run(None, feed)
        outputs = [e for e in io if e[1] == TensorIOMode.OUTPUT]
        for i, (name, _m, dt, shape) in enumerate(outputs):
            n = int(np.prod(shape)) * dt.itemsize
            dst = heap.bytes_at(addresses[name], n)
            if dst is None:
                dev.hazard(f"engine output {name!r} points at unmapped memory")
                continue
            if outs is None:
                dst.view(dt)[...] = np.nan
            else:
                dst[...] = np.ascontiguousarray(outs[i], dt).reshape(-1).view(np.uint8)
                if dev.nan_logit and i == 0 and dt.kind == "f":
                    dst.view(dt)[0] = np.nan  # slice 0's first logit: a model that overflowed on this input


class _Tensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _Network:
    def __init__(self):
        self.model = None
        self.inputs: list[_Tensor] = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class _ParserError:
    def __init__(self, node, op, name, desc):
        self._v = (node, op, name, desc)

    def node(self):
        return self._v[0]

    def node_operator(self):
        return self._v[1]

    def node_name(self):
        return self._v[2]

    def desc(self):
        return self._v[3]


class _Parser:
    def __init__(self, dev, network: _Network, logger):
        dev.check_logger(logger)
        self._dev, self._network, self.errors = dev, network, []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse(self, onnx_bytes):
        import onnx
        from onnx import TensorProto, numpy_helper

        self._dev.trt_call("OnnxParser.parse")
        model = onnx.load_from_string(bytes(onnx_bytes))
        inits = {i.name: i for i in model.graph.initializer}
        for idx, node in enumerate(model.graph.node):
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if len(node.input) > 2 and node.input[2] in inits and np.any(numpy_helper.to_array(inits[node.input[2]])):
                self.errors.append(_ParserError(idx, node.op_type, node.name,
                                                "Assertion failed: shiftIsAllZeros(zeroPoint): TensorRT only supports "
                                                "symmetric quantization. The zero point for the QuantizeLinear/"
                                                "DequantizeLinear operator must be all zeros."))
            if node.op_type == "DequantizeLinear" and node.input[0] in inits and \
                    inits[node.input[0]].data_type == TensorProto.INT32:
                self.errors.append(_ParserError(idx, node.op_type, node.name,
                                                "DequantizeLinear: INT32 input is not supported (quantized bias)"))
        if self.errors:
            return False
        self._network.model = model
        init_names = set(inits)
        for vi in model.graph.input:
            if vi.name in init_names:
                continue
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            self._network.inputs.append(_Tensor(vi.name, shape))
        return True


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data) or b"emulated timing cache"

    def serialize(self):
        return self.data


class _Config:
    def __init__(self):
        self.flags = {6}  # TF32 on by default, as in TensorRT
        self.profiles = []
        self.cache = None
        self.hardware_compatibility_level = 0
        self.builder_optimization_level = 3
        self.profiling_verbosity = 0
        self.default_device_type = 0
        self.DLA_core = -1

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def set_flag(self, flag):
        self.flags.add(int(flag))

    def clear_flag(self, flag):
        self.flags.discard(int(flag))

    def get_flag(self, flag):
        return int(flag) in self.flags

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        return _TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _Builder:
    def __init__(self, dev: EmulatedDevice, logger):
        dev.check_logger(logger)
        self._dev, self._logger = dev, logger
        self._device = dev.trt_call("Builder")
        self.num_DLA_cores = 0

    def create_network(self, flags=0):
        return _Network()

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config):
        dev = self._dev
        device = dev.trt_call("build_serialized_network")
        if device != self._device:
            dev.hazard("the builder ran with another device current than it was created with")
        props = dev.devices[device]
        max_batch = 1
        for p in config.profiles:
            for _lo, _opt, hi in p.shapes.values():
                max_batch = max(max_batch, hi[0])
        _log(self._logger, _Severity.INFO, f"emulated build on {props['name']} (no TensorRT, no GPU)")
        header = {"trt_version": dev.version, "compute_capability": list(props["compute_capability"]),
                  "hardware_compat": {0: "none", 1: "ampere+", 2: "same-cc"}[int(config.hardware_compatibility_level)],
                  "version_compatible": 9 in config.flags, "tf32": 6 in config.flags, "max_batch": max_batch,
                  "machine": dev.machine()}
        raw = json.dumps(header).encode()
        return PLAN_MAGIC + len(raw).to_bytes(4, "little") + raw + network.model.SerializeToString()


__all__ = ["EmulatedDevice", "EmulatedDeviceArray", "PLAN_MAGIC", "DEVICES"]
