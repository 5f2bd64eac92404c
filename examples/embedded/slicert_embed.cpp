// Embedded mode: a C++ "firmware" process that hosts the Python interpreter, loads a SliceRT bundle
// once, and runs frames that live in a C buffer, without copying them (docs/firmware.md).
//
//   slicert_embed BUNDLE HEIGHT WIDTH FRAMES [PRECISION]
//
// Threads and the GIL:
//   * the main thread initialises the interpreter (Py_InitializeFromConfig), imports engine, loads the
//     session, wraps the acquisition buffer, then RELEASES the GIL (PyEval_SaveThread) and starts the
//     inference thread;
//   * the inference thread takes the GIL around each call (PyGILState_Ensure / PyGILState_Release).
//     Session.run_into releases it again inside the native preprocessing and ONNX Runtime, so other
//     Python threads can run meanwhile, but C code must never touch a Python object without it;
//   * the main thread takes the GIL back (PyEval_RestoreThread), closes the session and finalises the
//     interpreter. Initialise and finalise on the same thread, once per process.
//
// The frame buffer is wrapped once at start-up (memoryview over the C memory -> numpy.frombuffer ->
// reshape): firmware writes each new frame into the same buffer, and run_into reads it in place.
// Prints one JSON object: start-up costs and per-call latency of run_into called from C and from a
// Python loop in the same process, interleaved in blocks.
#include <Python.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#ifndef SLICERT_PYTHON_EXECUTABLE
#define SLICERT_PYTHON_EXECUTABLE ""
#endif

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Owned reference holder: Py_XDECREF on scope exit, so no early return leaks.
struct Ref {
  PyObject *p = nullptr;
  Ref() = default;
  explicit Ref(PyObject *o) : p(o) {}
  Ref(const Ref &) = delete;
  Ref &operator=(const Ref &) = delete;
  ~Ref() { Py_XDECREF(p); }
  PyObject *get() const { return p; }
  explicit operator bool() const { return p != nullptr; }
};

bool fail(const char *what) {
  std::fprintf(stderr, "slicert_embed: %s failed:\n", what);
  if (PyErr_Occurred()) PyErr_Print();  // prints and clears: the process carries on and returns an error
  return false;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// Firmware side: new pixels arrive in the acquisition buffer (here: a moving 12-bit pattern).
void acquire(std::vector<uint16_t> &buf, uint32_t k) {
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint16_t>((i * 2654435761u + k * 40503u) & 4095u);
}

struct Embedded {
  PyObject *session = nullptr;  // borrowed from main's Refs
  PyObject *result = nullptr;
  PyObject *frame = nullptr;     // numpy view of `pixels`
  PyObject *run_into = nullptr;  // interned method name
  PyObject *py_loop = nullptr;   // Python function timing run_into from Python
  std::vector<uint16_t> *pixels = nullptr;
  long frames = 0;
  std::vector<double> c_us, c_held_us, py_us;
  bool ok = true;
  bool match = false;
  double first_score = 0.0;
};

// The inference thread: the GIL only around calls into Python.
void inference_thread(Embedded *e) {
  const long block = 100;
  for (long done = 0; done < e->frames && e->ok; done += block) {
    // (1) from C: one PyObject_CallMethodObjArgs per frame
    for (long k = 0; k < block; ++k) {
      acquire(*e->pixels, static_cast<uint32_t>(done + k));
      PyGILState_STATE g = PyGILState_Ensure();
      auto t0 = Clock::now();
      PyObject *r = PyObject_CallMethodObjArgs(e->session, e->run_into, e->result, e->frame, nullptr);
      double us = ms_since(t0) * 1e3;
      if (!r) e->ok = fail("session.run_into");
      Py_XDECREF(r);
      PyGILState_Release(g);
      if (!e->ok) return;
      e->c_us.push_back(us);
    }
    // (1b) from C with the GIL held across the block (a dedicated inference thread may do this)
    {
      PyGILState_STATE g = PyGILState_Ensure();
      for (long k = 0; k < block && e->ok; ++k) {
        acquire(*e->pixels, static_cast<uint32_t>(done + k));
        auto t0 = Clock::now();
        PyObject *r = PyObject_CallMethodObjArgs(e->session, e->run_into, e->result, e->frame, nullptr);
        double us = ms_since(t0) * 1e3;
        if (!r) e->ok = fail("session.run_into");
        Py_XDECREF(r);
        e->c_held_us.push_back(us);
      }
      PyGILState_Release(g);
      if (!e->ok) return;
    }
    // (2) the same call from a Python loop, same objects, same thread
    PyGILState_STATE g = PyGILState_Ensure();
    {  // every Ref in this block is released before the GIL is
      Ref times(PyObject_CallFunction(e->py_loop, "OOOl", e->session, e->result, e->frame, block));
      if (!times) {
        e->ok = fail("python loop");
      } else {
        Py_ssize_t n = PyList_Size(times.get());
        for (Py_ssize_t i = 0; i < n; ++i) e->py_us.push_back(PyFloat_AsDouble(PyList_GetItem(times.get(), i)));
      }
    }
    PyGILState_Release(g);
  }
  // Read the scores through the buffer protocol (no copy) and check them against session.run.
  PyGILState_STATE g = PyGILState_Ensure();
  {
    Ref check(PyObject_CallFunction(e->py_loop, "OOOl", e->session, e->result, e->frame, -1L));
    if (!check) {
      e->ok = fail("check");
    } else {
      e->match = PyObject_IsTrue(check.get()) == 1;
      Ref scores(PyObject_GetAttrString(e->result, "scores"));
      Py_buffer view;
      if (scores && scores.get() != Py_None && PyObject_GetBuffer(scores.get(), &view, PyBUF_C_CONTIGUOUS) == 0) {
        if (view.len >= static_cast<Py_ssize_t>(sizeof(float)))
          e->first_score = static_cast<const float *>(view.buf)[0];
        PyBuffer_Release(&view);
      }
      PyErr_Clear();
    }
  }
  PyGILState_Release(g);
}

const char *kPythonHelpers = R"PY(
import time
import numpy as np

def loop(session, result, frame, n):
    if n < 0:   # check: the in-place result equals a fresh session.run on the same pixels
        session.run_into(result, frame)
        ref = session.run(np.array(frame))
        if result.scores is not None:
            return bool(np.array_equal(result.scores, ref.scores))
        return bool(np.array_equal(result.mask, ref.mask))
    out = []
    ns = time.perf_counter_ns
    run_into = session.run_into
    for _ in range(n):
        t0 = ns()
        run_into(result, frame)
        out.append((ns() - t0) * 1e-3)
    return out
)PY";

}  // namespace

int main(int argc, char **argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s BUNDLE HEIGHT WIDTH FRAMES [PRECISION]\n", argv[0]);
    return 2;
  }
  const char *bundle = argv[1];
  const long height = std::atol(argv[2]), width = std::atol(argv[3]), frames = std::atol(argv[4]);
  const char *precision = argc > 5 ? argv[5] : "best";
  if (height < 1 || width < 1 || height > 16384 || width > 16384 || frames < 100) {
    std::fprintf(stderr, "slicert_embed: HEIGHT/WIDTH in 1..16384, FRAMES >= 100\n");
    return 2;
  }

  // -- start-up, on the main thread -----------------------------------------------------------------
  auto t_init = Clock::now();
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  // The interpreter finds the virtual environment (and so `engine`) from the executable it believes
  // it is: SLICERT_PYTHON overrides the one CMake found.
  const char *exe = std::getenv("SLICERT_PYTHON");
  if (!exe || !*exe) exe = SLICERT_PYTHON_EXECUTABLE;
  if (*exe) {
    PyStatus st = PyConfig_SetBytesString(&config, &config.program_name, exe);
    if (PyStatus_Exception(st)) {
      PyConfig_Clear(&config);
      std::fprintf(stderr, "slicert_embed: bad SLICERT_PYTHON\n");
      return 1;
    }
  }
  config.install_signal_handlers = 0;  // the firmware owns SIGINT/SIGTERM
  PyStatus st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    std::fprintf(stderr, "slicert_embed: Py_InitializeFromConfig: %s\n", st.err_msg ? st.err_msg : "?");
    return 1;
  }
  const double init_ms = ms_since(t_init);

  int rc = 1;
  std::vector<uint16_t> pixels(static_cast<size_t>(height * width));
  acquire(pixels, 0);
  Embedded e;
  double import_ms = 0, load_ms = 0;
  // Each start-up step runs only if the previous one succeeded: a Python call with an exception
  // pending is not allowed, and the first error is the one to report.
#define STEP(ref, expr, what) Ref ref(ok_so_far ? (expr) : nullptr); if (ok_so_far && !ref) ok_so_far = fail(what)
  {
    bool ok_so_far = true;
    auto t0 = Clock::now();
    STEP(engine, PyImport_ImportModule("engine"), "start-up: import engine");
    STEP(np, PyImport_ImportModule("numpy"), "start-up: import numpy");
    import_ms = ms_since(t0);
    t0 = Clock::now();
    STEP(load, PyObject_GetAttrString(engine.get(), "load"), "start-up: engine.load");
    STEP(kwargs, Py_BuildValue("{s:i,s:s}", "threads", 1, "precision", precision), "start-up: arguments");
    STEP(args, Py_BuildValue("(s)", bundle), "start-up: arguments");
    STEP(session, PyObject_Call(load.get(), args.get(), kwargs.get()), "start-up: load bundle");
    STEP(task, PyObject_GetAttrString(session.get(), "task"), "start-up: session.task");
    bool seg = ok_so_far && PyUnicode_CompareWithASCIIString(task.get(), "segmentation") == 0;
    STEP(result, seg ? PyObject_CallMethod(session.get(), "new_result", "((ll))", height, width)
                     : PyObject_CallMethod(session.get(), "new_result", nullptr), "start-up: new_result");
    load_ms = ms_since(t0);
    // Zero-copy wrap of the C buffer: memoryview -> numpy uint16 view -> (H, W). Done once.
    STEP(mem, PyMemoryView_FromMemory(reinterpret_cast<char *>(pixels.data()),
                                      static_cast<Py_ssize_t>(pixels.size() * sizeof(uint16_t)), PyBUF_READ),
         "start-up: memoryview");
    STEP(flat, PyObject_CallMethod(np.get(), "frombuffer", "Os", mem.get(), "uint16"), "start-up: frombuffer");
    STEP(frame, PyObject_CallMethod(flat.get(), "reshape", "((ll))", height, width), "start-up: reshape");
    STEP(globals, PyDict_New(), "start-up: globals");
    if (ok_so_far && PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins()) != 0)
      ok_so_far = fail("start-up: builtins");
    STEP(ran, PyRun_String(kPythonHelpers, Py_file_input, globals.get(), globals.get()), "start-up: helpers");
    PyObject *loop = ok_so_far ? PyDict_GetItemString(globals.get(), "loop") : nullptr;  // borrowed
    STEP(run_into, PyUnicode_InternFromString("run_into"), "start-up: intern");
#undef STEP
    if (ok_so_far && loop) {
      e.session = session.get();
      e.result = result.get();
      e.frame = frame.get();
      e.run_into = run_into.get();
      e.py_loop = loop;
      e.pixels = &pixels;
      e.frames = frames;
      // -- serve: GIL released on the main thread, taken per call by the inference thread ----------
      PyThreadState *main_state = PyEval_SaveThread();
      std::thread worker(inference_thread, &e);
      worker.join();
      PyEval_RestoreThread(main_state);
      Ref closed(PyObject_CallMethod(session.get(), "close", nullptr));
      if (!closed) fail("session.close");
      if (e.ok) {
        double c50 = percentile(e.c_us, 0.5), p50 = percentile(e.py_us, 0.5);
        std::printf("{\"init_ms\": %.3f, \"import_ms\": %.3f, \"load_ms\": %.3f, \"frames\": %ld, "
                    "\"c_call_us_p50\": %.3f, \"c_call_us_p99\": %.3f, \"c_gil_held_us_p50\": %.3f, "
                    "\"py_call_us_p50\": %.3f, "
                    "\"py_call_us_p99\": %.3f, \"c_over_py_us_p50\": %.3f, \"match\": %s, \"first_score\": %.6f, "
                    "\"task\": \"%s\"}\n",
                    init_ms, import_ms, load_ms, static_cast<long>(e.c_us.size()), c50, percentile(e.c_us, 0.99),
                    percentile(e.c_held_us, 0.5), p50, percentile(e.py_us, 0.99), c50 - p50, e.match ? "true" : "false", e.first_score,
                    seg ? "segmentation" : "classification");
        rc = e.match ? 0 : 3;
      }
    }
  }  // every Ref released while the interpreter is alive
  if (Py_FinalizeEx() < 0) rc = rc ? rc : 1;
  return rc;
}
