"""Coded concepts SliceRT writes into SEG and SR.

Standard codes (SNOMED CT, DCM, UCUM) wherever one means exactly what is reported. A bundle's class
labels are free text chosen by whoever trained the model ("organ", "nodule"), so they are coded in a
private scheme, 99SLICERT (PS3.16 8.2: designators starting with "99" are private), declared in each
object's Coding Scheme Identification Sequence: a reader sees that the concept is model-defined
instead of being told a guessed SNOMED code. (Standard codes per label would have to be recorded by
the toolchain in the bundle; bundles do not carry them yet.)
"""
from __future__ import annotations

import re

SCHEME = "99SLICERT"
SCHEME_NAME = "SliceRT model-defined concepts"

# Concept values of the private scheme (<= 16 characters, PS3.3 C.8.3.2 Code Value SH).
MODEL_CLASS = ("MODELCLASS", "Model output class")
PROBABILITY = "PROB"  # + class index: probability the model gives that class
PREDICTED = ("PREDICTED", "Predicted class")
OOD_FLAG = ("OOD", "Out of distribution")
OOD_SCORE = ("OODSCORE", "Out-of-distribution score")
OOD_THRESHOLD = ("OODTHRESH", "Out-of-distribution threshold")
OOD_STATISTIC = ("OODSTAT", "Out-of-distribution statistic")
ELIGIBLE = ("ELIGIBLE", "Eligible input (bundle's intended inputs)")
PIXEL_COUNT = ("PIXELCOUNT", "Pixel count")
LATENCY = ("LATENCY", "Inference latency (decode to post-processing)")


def _value(label: str, index: int) -> str:
    # Code values are SH (16 chars): an index keeps them unique whatever the label says.
    stem = re.sub(r"[^A-Z0-9]", "", label.upper())[:10]
    return f"C{index}{stem}"[:16]


def coded(value: str, meaning: str, scheme: str = SCHEME):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def local(pair: tuple[str, str]):
    return coded(pair[0], pair[1])


def class_concept(label: str, index: int):
    """The coded concept of model class `index` (its label)."""
    return coded(_value(label, index), label)


def statistic_value(name: str) -> str:
    """Code value of an OOD statistic name (engine.trust: input_mean, energy, mahalanobis ...)."""
    return ("S" + re.sub(r"[^A-Z0-9]", "", name.upper()))[:16]


def probability_concept(label: str, index: int):
    return coded(f"{PROBABILITY}{index}"[:16], f"Probability of {label}")


def scheme_item():
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME,
                                          responsible_organization="SliceRT")
