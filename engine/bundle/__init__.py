"""`.slicert` bundles: one file holding the model variants, compiled engines, preprocessing spec,
accuracy report and provenance, every member checked by SHA-256 on load.

    build_bundle(source, out, ...)   toolchain/quantizer output -> bundle   (`slicert build`)
    open_bundle(path)                verified, open bundle                  (`slicert inspect`)
"""
from __future__ import annotations

from engine.bundle.builder import BuildReport, build_bundle
from engine.bundle.format import SCHEMA_VERSION, SUFFIX
from engine.bundle.reader import Bundle, open_bundle
from engine.bundle.writer import write_bundle

__all__ = ["SCHEMA_VERSION", "SUFFIX", "BuildReport", "Bundle", "build_bundle", "open_bundle", "write_bundle"]
