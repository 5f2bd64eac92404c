"""The node's parts without a network: AE addresses and the destination rule, the transfer syntaxes it
offers, and the spool's durability contract."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from engine.dicomout.node.config import AEAddress, NodeConfig, decodable_transfer_syntaxes
from engine.dicomout.node.spool import Spool
from engine.errors import InputError

from .conftest import sample_file


def test_ae_addresses_parse_and_refuse_what_is_not_one(tmp_path):
    a = AEAddress.parse("ORTHANC@127.0.0.1:4242")
    assert (a.ae_title, a.host, a.port) == ("ORTHANC", "127.0.0.1", 4242) and str(a) == "ORTHANC@127.0.0.1:4242"
    assert AEAddress.parse("PACS@[::1]:104").host == "::1"
    for bad, why in (("ORTHANC127.0.0.1:4242", "AE@HOST:PORT"), ("A@h:0", "port 0"), ("A@h:99999", "port 99999"),
                     ("THIS_TITLE_IS_TOO_LONG@h:1", "not a DICOM AE title"), ("BACK\\SLASH@h:1", "AE title")):
        with pytest.raises(InputError, match=why):
            AEAddress.parse(bad)


def test_results_go_only_where_configured(tmp_path):
    with pytest.raises(InputError, match="needs a destination"):
        NodeConfig(bundle=tmp_path / "x.slicert")
    fwd = NodeConfig(bundle=tmp_path / "x.slicert", forward=AEAddress.parse("PACS@h:104"))
    assert str(fwd.destination_for("ANYONE")) == "PACS@h:104" and fwd.accepts_caller("ANYONE")[0]
    rep = NodeConfig(bundle=tmp_path / "x.slicert", reply_to={"US1": AEAddress.parse("US1@10.0.0.5:104")})
    assert str(rep.destination_for("US1")) == "US1@10.0.0.5:104"
    assert rep.destination_for("OTHER") is None
    ok, why = rep.accepts_caller("OTHER")
    assert not ok and "no --reply-to" in why
    only = NodeConfig(bundle=tmp_path / "x.slicert", forward=AEAddress.parse("PACS@h:104"), allowed_callers=("CR1",))
    assert only.accepts_caller("CR1")[0] and not only.accepts_caller("CR2")[0]


def test_offered_transfer_syntaxes_are_the_ones_the_reader_decodes():
    from pydicom.pixels import get_decoder

    offered = decodable_transfer_syntaxes()
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"} <= set(offered)
    for uid in offered[4:]:
        assert get_decoder(uid).is_available
    assert "1.2.840.10008.1.2.4.100" not in offered  # MPEG-2: the reader has no decoder


def test_spool_is_durable_ordered_and_keeps_routing(tmp_path):
    data = Path(sample_file("CT_small.dcm")).read_bytes()
    spool = Spool(tmp_path / "spool")
    a = spool.write(data, "CR ROOM 1", "1.2.3.4")
    b = spool.write(data, "US1", "1.2.3.5")
    assert [e.sop_instance_uid for e in spool.pending()] == ["1.2.3.4", "1.2.3.5"]  # arrival order
    assert [e.calling_ae for e in spool.pending()] == ["CR ROOM 1", "US1"]
    assert pydicom.dcmread(a.path).SOPInstanceUID == pydicom.dcmread(sample_file("CT_small.dcm")).SOPInstanceUID
    (spool.incoming / "deadbeef.part").write_bytes(b"half a file")  # a write that was never acknowledged
    assert Spool(tmp_path / "spool").discard_partial() == 1
    assert list(spool.incoming.iterdir()) == []
    spool.remove(a)
    assert [e.sop_instance_uid for e in spool.pending()] == ["1.2.3.5"]
    dst = spool.quarantine(b, "DicomError: because")
    assert spool.pending() == [] and dst.exists() and "because" in dst.with_suffix(".txt").read_text()
    with pytest.raises(InputError, match="not a DICOM UID"):
        spool.write(data, "X", "../../etc/passwd")
