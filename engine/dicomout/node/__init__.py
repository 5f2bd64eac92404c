"""`slicert serve-dicom`: a DICOM storage SCP that runs a bundle on every received image and C-STOREs
the SEG/SR results to a configured destination (docs/dicom-node.md).

    config.py   AE addresses, accepted SOP classes and transfer syntaxes, the node's settings
    spool.py    received instances on disk (fsync + atomic rename) until their results are stored
    forward.py  C-STORE of results to the destination (pynetdicom SCU)
    server.py   the SCP: association policy, C-ECHO, C-STORE -> spool -> engine -> results queue
"""
from engine.dicomout.node.config import AEAddress, NodeConfig
from engine.dicomout.node.server import DicomNode

__all__ = ["AEAddress", "DicomNode", "NodeConfig"]
