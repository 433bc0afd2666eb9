"""Signing in cosign's formats: the sealed key file (decrypted, or refused in one line
whatever it holds), payloads and envelopes cosign verifies, the artifact manifests. Keys
here are sealed by the test the way `cosign generate-key-pair` seals them; the
integration tests check the signatures with cosign itself."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.secret import SecretBox

from buildtasks.release import signing
from buildtasks.release.signing import SigningError

PASSWORD = "pässword"
LEGACY = {"N": 1 << 15, "r": 8, "p": 1}  # the cheapest scrypt cosign accepts


def sealed(
    key, password: str | bytes = PASSWORD, params: dict | None = None, label: str = ""
) -> str:
    """key's PKCS#8 DER sealed as cosign seals it (scrypt, nacl/secretbox), as PEM; a
    password given as bytes is used as they are."""
    params = params or LEGACY
    salt, nonce = b"s" * 32, b"n" * SecretBox.NONCE_SIZE
    raw = password if isinstance(password, bytes) else password.encode()
    secret = hashlib.scrypt(raw, salt=salt, n=params["N"], r=params["r"],
                            p=params["p"], maxmem=1 << 28, dklen=32)  # fmt: skip
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    body = {
        "kdf": {"name": "scrypt", "params": params, "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(SecretBox(secret).encrypt(der, nonce).ciphertext).decode(),
    }
    return pem(json.dumps(body).encode(), label or signing.PRIVATE_PEM[0])


def pem(data: bytes, label: str) -> str:
    lines = [base64.b64encode(data).decode()[i : i + 64] for i in range(0, 4 * len(data), 64)]
    return (
        f"-----BEGIN {label}-----\n" + "\n".join(filter(None, lines)) + f"\n-----END {label}-----\n"
    )


def public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_SEALED = sealed(EC_KEY)


@pytest.mark.parametrize(
    "key",
    [EC_KEY, ed25519.Ed25519PrivateKey.generate()],
    ids=["ecdsa-p256", "ed25519"],
)
def test_a_sealed_key_opens_signs_and_matches_its_public_half(key):
    signer = signing.load_key(sealed(key), PASSWORD, "publish.key k")
    assert signer.matches(public_pem(key))
    assert not signer.matches(public_pem(ec.generate_private_key(ec.SECP256R1())))
    assert signer.verifies(b"data", signer.sign(b"data"))
    assert not signer.verifies(b"other", signer.sign(b"data"))


@pytest.mark.parametrize(
    "key",
    [rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())],
    ids=["rsa", "ecdsa-p384"],
)
def test_a_key_cosign_does_not_make_is_refused_in_one_line(key):
    with pytest.raises(SigningError, match="make an ECDSA P-256 pair"):
        signing.load_key(sealed(key), PASSWORD, "k")


def test_the_older_pem_label_opens_too():
    text = sealed(EC_KEY, label="ENCRYPTED COSIGN PRIVATE KEY")
    assert signing.load_key(text, PASSWORD, "k").matches(public_pem(EC_KEY))


def test_a_wrong_password_is_one_error_that_shows_no_password():
    with pytest.raises(SigningError, match="does not open with COSIGN_PASSWORD") as caught:
        signing.load_key(EC_SEALED, "wrong", "publish.key cosign.key")
    assert "wrong" not in str(caught.value).replace("(wrong password)", "")
    assert str(caught.value).startswith("publish.key cosign.key ")


def test_scrypt_settings_cosign_does_not_write_are_refused_before_any_work():
    body = json.loads(base64.b64decode("".join(EC_SEALED.splitlines()[1:-1])))
    body["kdf"]["params"] = {"N": 1 << 30, "r": 8, "p": 1}  # would ask for 128 GiB
    with pytest.raises(SigningError, match="sealed in a way cosign does not write"):
        signing.load_key(pem(json.dumps(body).encode(), signing.PRIVATE_PEM[0]), PASSWORD, "k")


def test_scrypt_settings_equal_only_as_floats_are_refused():
    body = json.loads(base64.b64decode("".join(EC_SEALED.splitlines()[1:-1])))
    body["kdf"]["params"] = {"N": 32768.0, "r": 8, "p": 1}
    with pytest.raises(SigningError, match="sealed in a way cosign does not write"):
        signing.load_key(pem(json.dumps(body).encode(), signing.PRIVATE_PEM[0]), PASSWORD, "k")


def test_a_public_key_or_other_pem_is_not_a_private_key():
    with pytest.raises(SigningError, match="is not a cosign private key"):
        signing.load_key(public_pem(EC_KEY), PASSWORD, "k")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text_is_a_key_or_one_signing_error(text):
    with pytest.raises(SigningError):
        signing.load_key(text, PASSWORD, "k")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["kdf", "cipher", "ciphertext", "params", "salt", "nonce", "name"]), JSON)
def test_a_tampered_field_is_one_signing_error(field, value):
    body = json.loads(base64.b64decode("".join(EC_SEALED.splitlines()[1:-1])))
    for part in (body, body["kdf"], body["cipher"]):
        if field in part:
            part[field] = value
    with pytest.raises(SigningError):
        signing.load_key(pem(json.dumps(body).encode(), signing.PRIVATE_PEM[0]), PASSWORD, "k")


SIGNER = signing.Signer(EC_KEY)
DIGEST = "sha256:" + "ab" * 32


def test_the_image_signature_is_the_simple_signing_payload_cosign_writes():
    layer = signing.image_signature(SIGNER, "127.0.0.1:5000/team/app", DIGEST)
    assert layer.body == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/team/app"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    signature = base64.b64decode(layer.annotations[signing.SIGNATURE_ANNOTATION])
    assert SIGNER.verifies(layer.body, signature)
    assert layer.descriptor() == {
        "mediaType": signing.SIMPLE_SIGNING, "size": len(layer.body),
        "digest": "sha256:" + hashlib.sha256(layer.body).hexdigest(),
        "annotations": layer.annotations,
    }  # fmt: skip


def test_the_attestation_is_a_dsse_envelope_signed_over_its_pae():
    layer = signing.attestation(SIGNER, "r/app", DIGEST, "https://cyclonedx.org/bom", {"a": 1})
    envelope = json.loads(layer.body)
    statement = base64.b64decode(envelope["payload"])
    assert json.loads(statement) == {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://cyclonedx.org/bom",
        "subject": [{"name": "r/app", "digest": {"sha256": "ab" * 32}}],
        "predicate": {"a": 1},
    }
    pae = b"DSSEv1 28 application/vnd.in-toto+json %d %b" % (len(statement), statement)
    (entry,) = envelope["signatures"]
    assert SIGNER.verifies(pae, base64.b64decode(entry["sig"]))
    assert layer.annotations["predicateType"] == "https://cyclonedx.org/bom"
    assert layer.media_type == signing.DSSE


def test_the_artifact_config_names_every_layer_and_the_manifest_its_config():
    layers = [signing.image_signature(SIGNER, "r/app", DIGEST).descriptor(),
              {"mediaType": "x", "size": 1, "digest": "sha256:" + "0" * 64}]  # fmt: skip
    config, manifest = signing.artifact(layers)
    assert json.loads(config)["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers]
    document = json.loads(manifest)
    assert document["layers"] == layers and document["mediaType"] == signing.OCI_MANIFEST
    assert document["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()
    assert signing.artifact_tag(DIGEST, "sig") == f"sha256-{'ab' * 32}.sig"


def test_a_password_that_is_not_utf8_opens_the_key_sealed_with_its_bytes():
    """cosign reads COSIGN_PASSWORD as bytes; Python hands undecodable bytes of the
    environment over as surrogates, which must become the same bytes again."""
    raw = b"p\xffw"
    text = sealed(EC_KEY, raw)
    signer = signing.load_key(text, raw.decode("utf-8", "surrogateescape"), "publish.key k")
    assert signer.matches(public_pem(EC_KEY))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[" * 5000 + b"]" * 5000, "its sealed JSON"),
        (b"{" * 60_000, "over 65536 characters"),
    ],
    ids=["nested", "oversized"],
)
def test_a_hostile_sealed_body_is_one_line(body, error):
    with pytest.raises(SigningError, match=error):
        signing.load_key(pem(body, signing.PRIVATE_PEM[0]), PASSWORD, "publish.key k")
