"""Bundle signatures: Ed25519 over the manifest, which holds every member's SHA-256 and size.

The SHA-256 digests prove a bundle matches itself (integrity); a signature proves who wrote the
manifest (authenticity): with the member digests inside it, one signature covers every byte of the
bundle. The signature travels as the member `signature.json` (not listed in the manifest, which it
signs):

    {"format": "slicert-signature", "version": 1, "algorithm": "ed25519",
     "public_key": <base64 raw 32-byte key>, "fingerprint": <hex SHA-256 of the raw key>,
     "signature": <base64 64-byte signature of DOMAIN + manifest.json bytes>}

`DOMAIN` separates these signatures from any other use of the same key. Keys are PEM files
(PKCS#8 private, SubjectPublicKeyInfo public), made with `slicert keygen` or
`cryptography`'s `Ed25519PrivateKey.generate()`.

Trust: with `trusted_keys`, the signer must be one of them and the signature must verify with that
trusted key (the embedded public key only names the signer). Without, a signed bundle's signature is
still checked against its embedded key (a broken signature means tampering and is refused), but the
signer is not trusted: `SignatureStatus.verified` is False. Only a verified signature allows what
needs trust in the bundle's author (TensorRT host code in version-compatible plans).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InputError, SignatureError

SIGNATURE = "signature.json"
DOMAIN = b"slicert-bundle-manifest-signature-v1\0"
FORMAT = "slicert-signature"
_MAX_KEY_FILE = 64 << 10


@dataclass(frozen=True)
class SignatureStatus:
    """What is known about a bundle's signature (also in `Session.info["signature"]`)."""

    signed: bool
    signer: str | None  # hex SHA-256 fingerprint of the signer's raw Ed25519 public key
    verified: bool  # signed, valid, and by one of the trusted keys given at open
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"signed": self.signed, "signer": self.signer, "verified": self.verified, "detail": self.detail}


def fingerprint(public_key) -> str:
    """Hex SHA-256 of an Ed25519 public key's 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _pem_bytes(source: Any, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        p = os.fspath(source)
        if "\0" in p:
            raise InputError(f"{what} path {p!r} contains a NUL byte")
        try:
            if Path(p).stat().st_size > _MAX_KEY_FILE:
                raise InputError(f"{what} {p} is larger than {_MAX_KEY_FILE} bytes: not a PEM key")
            return Path(p).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    raise InputError(f"{what} must be a PEM file path, PEM bytes or a cryptography Ed25519 key, got "
                     f"{type(source).__name__}")


def load_public_keys(keys: Any) -> dict[str, Any] | None:
    """{fingerprint: Ed25519PublicKey} from trusted_keys (None stays None). Raises InputError."""
    if keys is None:
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(keys, (str, bytes, bytearray, os.PathLike, ed25519.Ed25519PublicKey)):
        keys = [keys]
    try:
        keys = list(keys)
    except TypeError:
        raise InputError(f"trusted_keys must be a list of Ed25519 public keys (PEM paths or bytes), got "
                         f"{type(keys).__name__}") from None
    if not keys:
        raise InputError("trusted_keys is empty: pass None to skip signature checks, or at least one public key")
    out = {}
    for i, k in enumerate(keys):
        if isinstance(k, ed25519.Ed25519PrivateKey):
            k = k.public_key()
        if not isinstance(k, ed25519.Ed25519PublicKey):
            pem = _pem_bytes(k, f"trusted_keys[{i}]")
            try:
                k = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError) as exc:
                raise InputError(f"trusted_keys[{i}] is not a PEM public key ({exc}); a private key goes to "
                                 f"`slicert build --sign`, its .pub.pem to trusted_keys") from None
            if not isinstance(k, ed25519.Ed25519PublicKey):
                raise InputError(f"trusted_keys[{i}] is a {type(k).__name__}, not an Ed25519 public key")
        out[fingerprint(k)] = k
    return out


def load_private_key(source: Any):
    """An Ed25519 private key from a PEM path / bytes (unencrypted PKCS#8) or a key object."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    pem = _pem_bytes(source, "signing key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"signing key is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError(f"signing key is a {type(key).__name__}, not an Ed25519 private key")
    return key


def sign(manifest_bytes: bytes, private_key: Any) -> bytes:
    """The `signature.json` member for these exact manifest bytes."""
    key = load_private_key(private_key)
    pub = key.public_key()
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    doc = {"format": FORMAT, "version": 1, "algorithm": "ed25519", "public_key": base64.b64encode(raw).decode(),
           "fingerprint": fingerprint(pub), "signature": base64.b64encode(key.sign(DOMAIN + manifest_bytes)).decode()}
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def generate_keypair(private_path: os.PathLike[str] | str, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: `<name>` (private, mode 0600) and `<stem>.pub.pem`; returns
    (private path, public path, fingerprint). Refuses to overwrite unless force."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from engine.errors import OutputExists

    priv_path = Path(private_path)
    pub_path = priv_path.with_name(priv_path.name.removesuffix(".pem") + ".pub.pem")
    for p in (priv_path, pub_path):
        if p.exists() and not force:
            raise OutputExists(f"{p} already exists; pass --force to replace it")
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    pub_path.write_bytes(pub)
    return priv_path, pub_path, fingerprint(key.public_key())


def _parse(sig_raw: bytes, path: Path) -> tuple[Any, str, bytes]:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from engine.bundle.reader import parse_json

    doc = parse_json(sig_raw, f"bundle {path}: member {SIGNATURE!r}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("algorithm") != "ed25519" or \
            doc.get("version") != 1:
        raise SignatureError(f"bundle {path}: {SIGNATURE} is not a SliceRT Ed25519 signature (format "
                             f"{FORMAT!r}, version 1)")
    try:
        raw_key = base64.b64decode(doc["public_key"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
        public_key = ed25519.Ed25519PublicKey.from_public_bytes(raw_key)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise SignatureError(f"bundle {path}: {SIGNATURE} has a malformed public_key or signature ({exc})") from None
    fp = fingerprint(public_key)
    if doc.get("fingerprint") != fp:
        raise SignatureError(f"bundle {path}: {SIGNATURE} names signer {str(doc.get('fingerprint'))[:80]!r}, but its "
                             f"public key's fingerprint is {fp}")
    return public_key, fp, signature


def check(manifest_bytes: bytes, sig_raw: bytes | None, trusted: dict[str, Any] | None,
          path: Path) -> SignatureStatus:
    """Verify `signature.json` against the manifest bytes. Raises SignatureError when the signature is
    broken, or when `trusted` is given and the bundle is unsigned or signed by another key."""
    from cryptography.exceptions import InvalidSignature

    if sig_raw is None:
        if trusted is not None:
            raise SignatureError(f"bundle {path} is not signed, and trusted_keys were given; sign it with "
                                 f"`slicert build --sign KEY.pem`")
        return SignatureStatus(False, None, False, "not signed")
    public_key, fp, signature = _parse(sig_raw, path)
    if trusted is not None:
        if fp not in trusted:
            raise SignatureError(f"bundle {path} is signed by key {fp}, which is not one of the trusted keys "
                                 f"({', '.join(sorted(trusted))})")
        public_key = trusted[fp]
    try:
        public_key.verify(signature, DOMAIN + manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"bundle {path}: the signature by key {fp} does not match the manifest (the bundle "
                             f"was modified after it was signed)") from None
    if trusted is None:
        return SignatureStatus(True, fp, False, f"signed by {fp}; signature valid, but no trusted_keys were given, "
                                                f"so the signer is not trusted")
    return SignatureStatus(True, fp, True, f"signed by trusted key {fp}; signature verified")
