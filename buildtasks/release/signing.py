"""Signatures in cosign's formats, made in this process: the key `cosign generate-key-pair`
writes (scrypt, then nacl/secretbox) is decrypted once per run, and each signature or
attestation is the layer cosign itself pushes, so `cosign verify` and `cosign
verify-attestation` check them. A cosign process decrypts the key on every call (0.2 s of
CPU each); a release signs its index, every platform image and an SBOM per platform."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from buildtasks.errors import BuildtasksError

PRIVATE_PEM = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
# The scrypt settings cosign's key library accepts, and no others: a key file is input, and
# its parameters decide how much memory and time the decryption takes.
SCRYPT = (
    {"N": 1 << 15, "r": 8, "p": 1},
    {"N": 1 << 16, "r": 8, "p": 1},
    {"N": 1 << 17, "r": 8, "p": 1},
)
MAX_KEY_TEXT = 64 * 1024  # a key file cosign writes is under 1 KiB
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# the config media type of an artifact, by its manifest's media type
ARTIFACT_CONFIG = {
    OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
    DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
}


class SigningError(BuildtasksError):
    """The signing key cannot be used."""


def _pem_body(text: str, labels: tuple[str, ...], what: str) -> bytes:
    """The bytes of the first PEM block in text whose label is one of labels."""
    lines = text.strip().splitlines()
    for label in labels:
        begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
        if begin in lines and end in lines[lines.index(begin) :]:
            start = lines.index(begin) + 1
            try:
                return base64.b64decode("".join(lines[start : lines.index(end, start)]))
            except (binascii.Error, ValueError):
                break
    raise SigningError(f"{what} is not a cosign private key (PEM {labels[0]})")


@dataclass(frozen=True)
class Signer:
    """A decrypted private key: ECDSA P-256 (signing with SHA-256), as `cosign
    generate-key-pair` makes, or Ed25519, as `cosign import-key-pair` takes."""

    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self.key.sign(data)

    def verifies(self, data: bytes, signature: bytes) -> bool:
        """Whether signature is this key's over data."""
        public = self.key.public_key()
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def matches(self, public_pem: str) -> bool:
        """Whether public_pem is this key's public half (False for anything else)."""
        try:
            public = serialization.load_pem_public_key(public_pem.encode())
        except (ValueError, UnsupportedAlgorithm):
            return False
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        return public.public_bytes(der, spki) == self.key.public_key().public_bytes(der, spki)


def load_key(text: str, password: str, what: str) -> Signer:
    """The key of a cosign private key file's text, decrypted with password; what names
    the key in errors. A wrong password, a tampered file or an unknown format is one
    SigningError."""
    if len(text) > MAX_KEY_TEXT:
        raise SigningError(f"{what} is not a cosign private key (over {MAX_KEY_TEXT} characters)")
    try:
        sealed = json.loads(_pem_body(text, PRIVATE_PEM, what))
        kdf, cipher = sealed["kdf"], sealed["cipher"]
        params = kdf["params"]
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(sealed["ciphertext"])
        known = kdf["name"] == "scrypt" and cipher["name"] == "nacl/secretbox"
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
        raise SigningError(f"{what} is not a cosign private key (its sealed JSON)") from None
    exact = isinstance(params, dict) and all(type(v) is int for v in params.values())
    if not known or not exact or params not in SCRYPT or len(nonce) != SecretBox.NONCE_SIZE:
        raise SigningError(f"{what} is sealed in a way cosign does not write")
    # the variable's bytes, as cosign reads them, even when they are not UTF-8
    secret = hashlib.scrypt(
        password.encode("utf-8", "surrogateescape"), salt=salt, n=params["N"], r=params["r"],
        p=params["p"], maxmem=1 << 28, dklen=SecretBox.KEY_SIZE,
    )  # fmt: skip
    try:
        der = SecretBox(secret).decrypt(ciphertext, nonce)
    except CryptoError:
        raise SigningError(f"{what} does not open with COSIGN_PASSWORD (wrong password)") from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: a sealed, encrypted key
        raise SigningError(f"{what} holds no private key cosign can sign with") from None
    p256 = isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    if not (p256 or isinstance(key, ed25519.Ed25519PrivateKey)):
        raise SigningError(
            f"{what} holds a key buildtasks does not sign with; make an ECDSA P-256 pair with "
            "`cosign generate-key-pair` (or import an Ed25519 key)"
        )
    return Signer(key)


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Layer:
    """One layer of a signature or attestation artifact: its blob and its descriptor's
    media type and annotations."""

    media_type: str
    body: bytes
    annotations: dict[str, str]

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.body).hexdigest()}"

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "size": len(self.body), "digest": self.digest,
                "annotations": self.annotations}  # fmt: skip


def image_signature(signer: Signer, repository: str, digest: str) -> Layer:
    """A simple-signing payload naming the image at repository@digest, signed."""
    payload = _json({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    })  # fmt: skip
    return Layer(SIMPLE_SIGNING, payload, {SIGNATURE_ANNOTATION: _b64(signer.sign(payload))})


def attestation(
    signer: Signer, repository: str, digest: str, predicate_type: str, predicate: dict
) -> Layer:
    """An in-toto statement about repository@digest carrying predicate, in a DSSE envelope
    signed over its pre-authentication encoding."""
    statement = _json({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [{"name": repository, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicate": predicate,
    })  # fmt: skip
    pae = b"DSSEv1 %d %b %d %b" % (len(IN_TOTO), IN_TOTO.encode(), len(statement), statement)
    envelope = _json({"payloadType": IN_TOTO, "payload": _b64(statement),
                      "signatures": [{"keyid": "", "sig": _b64(signer.sign(pae))}]})  # fmt: skip
    return Layer(DSSE, envelope, {SIGNATURE_ANNOTATION: "", "predicateType": predicate_type})


def artifact_tag(digest: str, kind: str) -> str:
    """The tag cosign keeps an image's signatures (sig) or attestations (att) under."""
    return f"{digest.replace(':', '-')}.{kind}"


def artifact(layers: list[dict], media_type: str = OCI_MANIFEST) -> tuple[bytes, bytes]:
    """(config, manifest) of a signature or attestation artifact holding the layers
    (descriptors), in the shape cosign writes: an OCI manifest, or a Docker one where the
    tag holds one already (cosign's COSIGN_DOCKER_MEDIA_TYPES, for registries without OCI)."""
    config = _json({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "config": {},
    })  # fmt: skip
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": ARTIFACT_CONFIG[media_type], "size": len(config),
                   "digest": f"sha256:{hashlib.sha256(config).hexdigest()}"},
        "layers": layers,
    })  # fmt: skip
    return config, manifest
