"""Run one corpus case through the public API and judge the outcome.

A case passes when the entry point raises the expected engine.errors class (or a subclass) whose
message matches the case's regex, within CASE_TIME_BOUND_S; an ACCEPTED case passes when it returns
a finite, well-formed result equal to the same pixels given contiguously. Anything else (another
exception type, a silent success, a wrong message) is a finding, described in `Outcome.problem`.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from engine import errors
from tests.corpus.arrays import materialize
from tests.corpus.case import ACCEPTED, Case

# Generous: a correct rejection takes milliseconds; this bound only has to catch hangs and
# pathological work (e.g. decoding gigapixels) on a 2-core machine shared with other jobs.
CASE_TIME_BOUND_S = 10.0

_OUT_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "float64": np.float64,
               "uint8": np.uint8}


@dataclass
class Outcome:
    case_id: str
    error_type: str | None  # qualified name of what was raised, None when the call returned
    message: str
    elapsed_s: float
    problem: str | None  # None: the case passed

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Sessions:
    """The sessions every case shares, plus valid inputs and their baseline results: after each
    case the same valid inputs must give bit-identical scores (the session is still usable)."""

    def __init__(self, corpus: Path):
        import engine
        from tests.corpus import bundle_files, dicom_files

        self.corpus = corpus
        self.classifier = engine.load(corpus / bundle_files.VALID_CLASSIFIER)
        self.segmenter = engine.load(corpus / bundle_files.VALID_SEGMENTER)
        self.tiny_ok = engine.load(corpus / bundle_files.VALID_CLASSIFIER, min_side=1)  # accepts 1x1 images
        rng = np.random.default_rng(99)
        self.valid_inputs: list[Any] = [rng.integers(0, 4096, (64, 64)).astype(np.uint16),
                                        str(dicom_files.parent_path(dicom_files.CT))]
        self.baseline = [self.classifier.run(x).scores.copy() for x in self.valid_inputs]
        self.baseline_mask = self.segmenter.run(self.valid_inputs[0], pixel_spacing_mm=(0.5, 0.5)).mask.copy()

    def still_usable(self) -> str | None:
        if self.classifier.closed:
            return "the shared session was closed by the case"
        for x, want in zip(self.valid_inputs, self.baseline):
            try:
                got = self.classifier.run(x).scores
            except Exception as exc:  # noqa: BLE001 - any failure here is the finding
                return f"a valid input failed after the case: {type(exc).__name__}: {exc}"
            if not np.array_equal(got, want):
                return f"a valid input gave different scores after the case: {got} != {want}"
        try:
            mask = self.segmenter.run(self.valid_inputs[0], pixel_spacing_mm=(0.5, 0.5)).mask
        except Exception as exc:  # noqa: BLE001
            return f"the segmenter failed on a valid input after the case: {type(exc).__name__}: {exc}"
        if not np.array_equal(mask, self.baseline_mask):
            return "the segmenter's mask for a valid input changed after the case"
        return None

    def close(self) -> None:
        self.classifier.close()
        self.segmenter.close()
        self.tiny_ok.close()


@contextlib.contextmanager
def simulated_gpu(compute_capability: tuple[int, int], trt_version: str):
    """Pretend TensorRT `trt_version` and a GPU of `compute_capability` exist, so engine selection
    runs as on a device. This machine has neither; nothing past selection is reached because the
    bundles used with this all lack a fitting engine (the point of those cases)."""
    from engine.backends.tensorrt import TensorRTBackend

    cc = tuple(compute_capability)
    with mock.patch("engine.bundle.tensorrt_build.device_compute_capability",
                    lambda device=0: (cc, f"Simulated GPU sm_{cc[0]}{cc[1]}")), \
            mock.patch("engine.bundle.tensorrt_build.tensorrt_version", lambda: trt_version), \
            mock.patch.object(TensorRTBackend, "availability",
                              classmethod(lambda cls: (True, f"TensorRT {trt_version} (simulated)"))):
        yield


def _dicom_input(path: Path, form: str) -> Any:
    if form == "bytes":
        return path.read_bytes()
    if form == "fileobj":
        return io.BytesIO(path.read_bytes())
    if form == "dataset":
        import pydicom

        return pydicom.dcmread(path, force=True)
    return str(path)


def _output_buffer(desc: dict[str, Any], x: np.ndarray) -> Any:
    if desc.get("list"):
        return [[0.0] * 32] * 32
    out = np.zeros(desc["shape"], dtype=_OUT_DTYPES[desc["dtype"]], order=desc.get("order", "C"))
    if desc.get("readonly"):
        out.setflags(write=False)
    return out


def _session(sessions: Sessions, name: str):
    return {"classifier": sessions.classifier, "segmenter": sessions.segmenter, "min_side_1": sessions.tiny_ok}[name]


def _call(case: Case, sessions: Sessions) -> Any:
    """Run the case's entry point; returns what it returned (exceptions propagate)."""
    import engine
    from engine import dicom, preprocess
    from engine.bundle import open_bundle
    from engine.spec import PreprocessSpec

    corpus = sessions.corpus
    kw = dict(case.kwargs)
    session = _session(sessions, kw.pop("session", "classifier"))
    path = corpus / case.file if case.file else None
    if case.entry in ("session.run", "session.stream", "session.run_batch", "dicom.read"):
        if path is not None:
            x = _dicom_input(path, kw.pop("form", "path"))
        else:
            x = materialize(case.recipe, session.spec)
        for key in ("spec",):
            if isinstance(kw.get(key), dict) and "make" in kw[key]:
                kw[key] = materialize(kw[key], session.spec)
        kw.pop("reference", None)
        kw.pop("same_as", None)
        kw.pop("areas", None)
        if case.entry == "session.run":
            return session.run(x, **kw)
        if case.entry == "session.stream":
            return list(session.stream(x, drop_stale=False, **kw))
        if case.entry == "session.run_batch":
            return session.run_batch([sessions.valid_inputs[0], x], **kw)
        img = dicom.read(x, **kw)
        return [img.pixels] if hasattr(img, "pixels") else [s.pixels for s in img]
    if case.entry == "spec.from_dict":
        return PreprocessSpec.from_dict(json.loads(path.read_text()))
    if case.entry == "bundle.open":
        with open_bundle(path) as b:
            return b.manifest
    if case.entry in ("engine.load", "engine.load.gpu"):
        target = path if path is not None else materialize(case.recipe)
        if "trusted_key_files" in kw:  # key files live in the corpus folder, found at run time
            kw["trusted_keys"] = [corpus / f for f in kw.pop("trusted_key_files")]
        if case.entry == "engine.load.gpu":
            with simulated_gpu(kw["compute_capability"], kw["trt_version"]):
                s = engine.load(target, backend="tensorrt")
        else:
            s = engine.load(target, **kw)
        s.close()
        return s
    if case.entry == "set_num_threads":
        before = preprocess.get_num_threads()
        try:
            return preprocess.set_num_threads(materialize(case.recipe))
        finally:
            preprocess.set_num_threads(before)
    if case.entry in ("preprocess", "preprocess_into"):
        x = materialize(case.recipe)
        spec = materialize(kw.pop("spec_override", None) or kw.pop("spec"), session.spec)
        kw.pop("spec", None)
        kw.pop("finite_result_ok", None)
        if case.entry == "preprocess":
            return preprocess.preprocess(x, spec, **kw)
        desc = kw.pop("out")
        out = _output_buffer(desc, x)
        if desc.get("alias_input"):
            x = out.view(np.uint8)[0, 0, :, :64].view(np.uint16)  # the input is a view of the output
        return preprocess.preprocess_into(out, x, spec, kw.pop("batch_index", 0), **kw)
    if case.entry == "postprocess":
        from engine import postprocess

        x = materialize(case.recipe)
        out = _output_buffer(kw["out"], x) if "out" in kw else None
        if kw["fn"] == "argmax_mask":
            return postprocess.argmax_mask(x, out=out)
        spec = materialize(kw["spec"], session.spec)
        return postprocess.mask_to_source(x, tuple(kw["src_hw"]), spec, out=out)
    raise ValueError(f"unknown entry {case.entry}")


def _check_accepted(case: Case, result: Any, sessions: Sessions) -> str | None:
    if case.entry == "postprocess":
        ok = isinstance(result, np.ndarray) and result.dtype == np.uint8 and not result.any()
        return None if ok else f"expected an all-background uint8 mask, got {result!r}"
    if case.entry == "session.stream":  # one result per frame
        if not isinstance(result, list) or not result:
            return f"accepted input gave no frames: {result!r}"
        problems = [_check_scores(r, sessions) for r in result]
        if any(problems):
            return next(p for p in problems if p)
    else:
        problem = _check_scores(result, sessions)
        if problem:
            return problem
    if case.kwargs.get("same_as"):
        # the same image as a valid file (e.g. frames found again after a broken offset table)
        from tests.corpus.dicom_files import parent_path

        session = _session(sessions, case.kwargs.get("session", "classifier"))
        same = case.kwargs["same_as"]  # a pydicom test file, or a file of the corpus ("dicom13/...")
        parent = str(sessions.corpus / same if "/" in same else parent_path(same))
        want = [r.scores for r in session.stream(parent, drop_stale=False)] if case.entry == "session.stream" \
            else [session.run(parent).scores]
        got = [r.scores for r in (result if isinstance(result, list) else [result])]
        if len(got) != len(want) or not all(np.array_equal(g, w) for g, w in zip(got, want)):
            return f"scores differ from those of {case.kwargs['same_as']}: {got} != {want}"
    if "areas" in case.kwargs:  # "none": the file's spacing must be ignored; "finite": areas must be given
        got = [getattr(r, "areas_mm2", None) for r in (result if isinstance(result, list) else [result])]
        if case.kwargs["areas"] == "none" and any(a is not None for a in got):
            return f"areas from an implausible spacing were reported: {got}"
        if case.kwargs["areas"] == "finite" and any(a is None for a in got):
            return "no areas although the file's spacing is plausible"
    if case.kwargs.get("reference") == "contiguous":
        session = _session(sessions, case.kwargs.get("session", "classifier"))
        x = materialize(case.recipe, session.spec)
        ref = session.run(np.ascontiguousarray(x)).scores
        if not np.array_equal(result.scores, ref):
            return f"scores {result.scores} differ from the same pixels given contiguously: {ref}"
    return None


def _check_scores(result: Any, sessions: Sessions) -> str | None:
    if getattr(result, "mask", None) is not None:  # segmenter: a mask, and areas finite when present
        areas = result.areas_mm2
        if areas is not None and not all(math.isfinite(v) and v >= 0 for v in areas.values()):
            return f"non-finite or negative areas: {areas}"
        return None
    scores = getattr(result, "scores", None)
    if scores is None or scores.shape != (len(sessions.classifier.labels),) or not np.isfinite(scores).all():
        return f"accepted input gave a malformed result: {result!r}"
    return None


def run_case(case: Case, sessions: Sessions) -> Outcome:
    t0 = time.perf_counter()
    raised: BaseException | None = None
    result = None
    try:
        result = _call(case, sessions)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - judging the type is the point (pyo3 panics are BaseException)
        raised = exc
    elapsed = time.perf_counter() - t0
    err_type = None if raised is None else f"{type(raised).__module__}.{type(raised).__qualname__}"
    message = "" if raised is None else str(raised)
    problem = None
    if case.expect == ACCEPTED:
        if raised is not None:
            problem = f"valid input refused with {err_type}: {message[:300]}"
        else:
            problem = _check_accepted(case, result, sessions)
    else:
        expected = getattr(errors, case.expect)
        if raised is None and case.kwargs.get("finite_result_ok"):
            # either answer is right for these: refuse, or return a finite result
            finite = isinstance(result, np.ndarray) and np.isfinite(result.astype(np.float64)).all()
            problem = None if finite else "returned non-finite values (inf/NaN) instead of refusing or saturating"
        elif raised is None:
            problem = f"no error: the call returned {type(result).__name__} for bad input ({case.why})"
        elif not isinstance(raised, expected):
            problem = f"raised {err_type} instead of engine.errors.{case.expect}: {message[:300]}"
        elif not re.search(case.match, message, re.IGNORECASE | re.DOTALL):
            problem = f"message does not name the problem (expected /{case.match}/): {message[:300]}"
    if problem is None and elapsed > CASE_TIME_BOUND_S:
        problem = f"took {elapsed:.2f} s (bound {CASE_TIME_BOUND_S} s)"
    unusable = sessions.still_usable()  # checked after every case, failed ones included
    if unusable:
        problem = f"{problem}; and {unusable}" if problem else unusable
    return Outcome(case.id, err_type, message, elapsed, problem)
