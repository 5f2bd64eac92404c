"""Printing untrusted text (from a bundle, a DICOM file or an error about one) to a terminal.

A manifest string or a DICOM attribute may hold terminal control sequences (ESC/CSI/OSC: set the
window title, clear the screen, write the clipboard). Everything the CLI prints from such a source
goes through `safe`, which replaces C0/C1 control characters (except newline and tab) with visible
escapes, so the text reads the same and the terminal does nothing.
"""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def safe(text: object) -> str:
    """`text` as a str with control and bidi-override characters shown as \\xNN / \\uNNNN escapes."""
    s = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", s)
