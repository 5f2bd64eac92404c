"""What the node accepts and where it sends results. Nothing is sent anywhere not named here."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InputError

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: 16 chars, default repertoire, no backslash

# Image Storage SOP classes the engine reads (single- and multi-frame greyscale and colour images).
# Non-image objects (SR, RT, waveforms, presentation states) are not offered: they are refused at
# association time instead of failing later.
IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
}
VERIFICATION = "1.2.840.10008.1.1"
NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
# Compressed syntaxes the engine's reader can decode when their pydicom plugin is installed.
COMPRESSED_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                       "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
                       "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                       "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5")


def decodable_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes engine.dicom.read decodes here: the native ones and every compressed one whose
    pydicom decoder has its plugin installed (asked of pydicom, so a missing plugin is refused at
    association time instead of failing per image)."""
    from pydicom.pixels import get_decoder

    out = list(NATIVE_SYNTAXES)
    for uid in COMPRESSED_SYNTAXES:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except NotImplementedError:
            pass
    return out


def check_ae_title(title: str, what: str) -> str:
    if not isinstance(title, str) or not _AE_RE.match(title) or not title.strip():
        raise InputError(f"{what}: {title!r} is not a DICOM AE title (1-16 printable ASCII characters, no backslash)")
    return title.strip()


@dataclass(frozen=True)
class AEAddress:
    """A remote Application Entity: title, host, TCP port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "--forward") -> AEAddress:
        """'AE@HOST:PORT' -> AEAddress (InputError naming what is wrong)."""
        m = re.match(r"^(?P<ae>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$", text or "")
        if not m:
            raise InputError(f"{what}: {text!r} is not AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise InputError(f"{what}: port {port} is not in 1-65535")
        return cls(check_ae_title(m["ae"], what), m["host"].strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class NodeConfig:
    """Settings of one node.

    forward: where every result goes. reply_to: calling AE title -> address of that AE's own storage
    SCP, for results that go back to the sender. With reply_to only, an association from a calling AE
    not in the table is rejected (there would be nowhere configured to send its results).
    allowed_callers: when not empty, only these calling AE titles may associate.
    """

    bundle: Path
    ae_title: str = "SLICERT"
    host: str = "127.0.0.1"
    port: int = 11112
    forward: AEAddress | None = None
    reply_to: dict[str, AEAddress] = field(default_factory=dict)
    allowed_callers: tuple[str, ...] = ()
    spool: Path = Path("slicert-spool")
    threads: int | None = None
    timeout_s: float = 30.0  # ACSE / DIMSE / network timeouts, both directions
    retry_max_s: float = 30.0  # longest wait between attempts to store results at an unreachable destination
    max_pdu: int = 0  # 0 = unlimited (pynetdicom's default is 16 kB)
    eligibility: str = "refuse"  # engine.load(eligibility=...): "refuse" answers 0xC000 for an unintended input

    def __post_init__(self):
        self.ae_title = check_ae_title(self.ae_title, "--ae-title")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"--port: {self.port!r} is not a TCP port")
        if self.forward is None and not self.reply_to:
            raise InputError("the node needs a destination for its results: --forward AE@HOST:PORT, or "
                             "--reply-to CALLING_AE@HOST:PORT for each sender; nothing is sent anywhere else")
        self.allowed_callers = tuple(check_ae_title(a, "--allow-caller") for a in self.allowed_callers)

    def destination_for(self, calling_ae: str) -> AEAddress | None:
        if self.forward is not None:
            return self.forward
        return self.reply_to.get(calling_ae.strip())

    def accepts_caller(self, calling_ae: str) -> tuple[bool, str]:
        ae = calling_ae.strip()
        if self.allowed_callers and ae not in self.allowed_callers:
            return False, f"calling AE {ae!r} is not in --allow-caller {list(self.allowed_callers)}"
        if self.forward is None and ae not in self.reply_to:
            return False, f"calling AE {ae!r} has no --reply-to address and no --forward is set"
        return True, ""
