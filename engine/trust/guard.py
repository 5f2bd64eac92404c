"""One session's trust checks: eligibility before inference, OOD score / calibration / saliency after.

Session calls `check(header)` after resolving an input (None for raw arrays) and `annotate(...)` after
its post-processing. Both are cheap: the eligibility verdict is cached per header (a cine's frames share
one), and the OOD statistics are NumPy reductions over the model input and a few output values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import IneligibleInput, InputError
from engine.trust.eligibility import POLICIES
from engine.trust.section import TrustSection, parse_trust


class TrustGuard:
    """Built by Session from its bundle, variant and the load options `eligibility` and `ood`."""

    def __init__(self, bundle, variant: str, backend, *, eligibility: str = "refuse", ood: bool = True):
        if eligibility not in POLICIES:
            raise InputError(f"eligibility must be one of {POLICIES}, got {eligibility!r}")
        if not isinstance(ood, bool):
            raise InputError(f"ood must be True or False, got {ood!r}")
        raw = bundle.manifest.get("trust")
        self.section: TrustSection | None = parse_trust(raw, bundle.variants) if raw is not None else None
        s = self.section
        self.bundle_name = bundle.path.name
        self.task = bundle.task
        self.policy = eligibility
        self.intended = s.eligibility if s is not None and eligibility != "off" else None
        self.temperature = s.temperature.get(variant, 1.0) if s is not None else 1.0
        self.ood_model = s.ood.get(variant) if s is not None and ood else None
        outputs = s.outputs if s is not None else {}
        self.features_name = outputs.get("features")
        self.cam_name = outputs.get("cam")
        # The CPU backend exposes its bound input array; on TensorRT the input lives on the GPU and the
        # input statistics are left out (the output-based statistics remain).
        self._input_of = getattr(type(backend), "input_array", None) is not None
        self._cache: dict[int, tuple[Any, tuple[str, ...]]] = {}
        self.enabled = self.intended is not None or self.ood_model is not None

    def info(self) -> dict[str, Any]:
        """What Session.info["trust"] says."""
        s = self.section
        return {
            "eligibility": self.policy if self.intended is not None else (
                "off" if self.policy == "off" else "not stated by the bundle"),
            "intended_inputs": self.intended.describe() if self.intended is not None else None,
            "ood": (f"on ({', '.join(self.ood_model.names)}; threshold {self.ood_model.threshold:.4g} at "
                    f"{self.ood_model.false_alarm_target:.0%} false alarms on the validation split)"
                    if self.ood_model is not None else ("off" if s is not None and s.ood else "not in the bundle")),
            "temperature": self.temperature,
            "saliency": ("class-activation map" if self.cam_name else "unavailable (no CAM output)")
            if self.task == "classification" else "per-pixel confidence",
        }

    # -- before inference ------------------------------------------------------------------------
    def check(self, header) -> tuple[str, ...] | None:
        """Eligibility reasons for a DICOM-derived input (engine.dicom Slice), None for raw arrays or when
        the bundle states no intended inputs. Raises IneligibleInput under the "refuse" policy."""
        if header is None or self.intended is None:
            return None
        info = header.info
        hit = self._cache.get(id(info))
        if hit is not None and hit[0] is info:
            reasons = hit[1]
        else:
            reasons = self.intended.check(info, getattr(header, "dataset", None))
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[id(info)] = (info, reasons)  # holds `info`, so its id is not reused
        if reasons and self.policy == "refuse":
            raise IneligibleInput(
                f"{info.source}: not an intended input of bundle {self.bundle_name}: {'; '.join(reasons)}. The "
                f"bundle is intended for {self.intended.describe()}. Load with engine.load(..., "
                f"eligibility='flag') to run it anyway with the result flagged", reasons=reasons)
        return reasons

    # -- after inference ---------------------------------------------------------------------------
    def reads_logits(self, saliency: bool) -> bool:
        """Whether `annotate` reads a segmenter's logits (`raw`): the mean-uncertainty OOD statistic and the
        saliency map do; eligibility and the other statistics do not. Where it does not, the session may
        take the class mask computed on the device instead of copying the logits back."""
        if saliency or self.task == "classification":
            return True
        return self.ood_model is not None and "mean_uncertainty" in self.ood_model.names

    def annotate(self, r, backend, outs: dict[str, np.ndarray], index: int, raw: np.ndarray | None,
                 reasons: tuple[str, ...] | None, src_hw, spec, saliency: bool) -> None:
        # raw: this slice's model output; None when the session took a device mask (reads_logits was False).
        r.eligibility = reasons
        model = self.ood_model
        if model is not None:
            x = backend.input_array[index] if self._input_of and model.needs_input else None
            feats = outs.get(self.features_name) if self.features_name else None
            features = feats[index] if feats is not None else None
            r.ood = model.score(model.signals(model_input=x, logits=raw, features=features, task=self.task))
        else:
            r.ood = None
        if saliency:
            from engine.trust import saliency as sal

            if self.task == "classification":
                cam = outs.get(self.cam_name) if self.cam_name else None
                if cam is None:
                    raise InputError(f"saliency=True: bundle {self.bundle_name}'s model has no class-activation "
                                     f"output (its classifier tail was not recognized at build time, or it was "
                                     f"built without tools/trust_fit.py)")
                r.saliency = sal.class_activation_map(cam[index], int(np.argmax(r.scores)), src_hw, spec)
            else:
                r.saliency = sal.confidence_map(raw, src_hw, spec, self.temperature)
        else:
            r.saliency = None


__all__ = ["TrustGuard"]
