"""A real Orthanc (Debian package `orthanc`) for the tests: started on free loopback ports with a
temporary configuration and storage directory, queried over its REST API, stopped at the end."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    AE = "ORTHANC"

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.log = root / "orthanc.log"

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        exe = shutil.which("Orthanc") or shutil.which("orthanc")
        if exe is None:
            pytest.skip("Orthanc is not installed (apt-get install orthanc)")
        config = {
            "Name": "slicert-test", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.AE, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "OverwriteInstances": False,
            "StorageCompression": False, "HttpsVerifyPeers": False, "ConcurrentJobs": 1, "DicomScpTimeout": 30,
        }
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(config))
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer on port {self.http_port} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    @property
    def address(self) -> str:
        return f"{self.AE}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str, raw: bool = False):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=20) as resp:
            body = resp.read()
        return body if raw else json.loads(body)

    def delete_all(self) -> None:
        for pid in self.get("/patients"):
            req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/patients/{pid}", method="DELETE")
            urllib.request.urlopen(req, timeout=20).close()

    def instances(self, modality: str | None = None) -> list:
        """Every stored instance (optionally of one modality) as a pydicom Dataset, via REST."""
        import io

        import pydicom

        out = []
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            if modality is None or tags.get("Modality") == modality:
                out.append(pydicom.dcmread(io.BytesIO(self.get(f"/instances/{iid}/file", raw=True))))
        return out

    def wait_for(self, modality: str, count: int, timeout_s: float) -> list:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.instances(modality)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.25)
