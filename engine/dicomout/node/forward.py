"""C-STORE of result objects (SEG, SR) to one configured destination over one association."""
from __future__ import annotations

import logging

from engine.dicomout.node.config import AEAddress
from engine.errors import SliceRTError

_log = logging.getLogger("slicert.node")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
_SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB007, 0xB006}  # PS3.4 B.2.3: warnings still mean "stored"


class ForwardError(SliceRTError, ConnectionError):
    """Results could not be stored at the destination (association refused, timeout, failure status)."""


class Forwarder:
    def __init__(self, ae_title: str, timeout_s: float, max_pdu: int = 0):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        self._ae = AE(ae_title=ae_title)
        for uid in (SEG_STORAGE, COMPREHENSIVE_SR):
            self._ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = timeout_s
        self._ae.connection_timeout = timeout_s
        self._ae.maximum_pdu_size = max_pdu

    def send(self, dest: AEAddress, datasets: list) -> None:
        """Store every dataset at `dest` or raise ForwardError (nothing is considered stored then)."""
        assoc = self._ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise ForwardError(f"association to {dest} {why}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code not in _SUCCESS_OR_WARNING:
                    comment = getattr(status, "ErrorComment", "") if status else ""
                    raise ForwardError(f"{dest} answered C-STORE of {ds.SOPClassUID.name} {ds.SOPInstanceUID} with "
                                       f"status {'none (connection lost)' if code is None else f'0x{code:04X}'} "
                                       f"{comment}".rstrip())
        finally:
            if assoc.is_established:
                assoc.release()
