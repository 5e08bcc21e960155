"""C2PA Content Credentials: signing the MP4s the sampling job writes and reading them back (c2pa-python).

A signed file carries a manifest with two assertions: the standard actions assertion (`c2pa.created`,
digital source type trainedAlgorithmicMedia, software agent lumiere_jax and its version), which is
what viewers and platforms read to label generated media, and GENERATION_LABEL, ours: the model
checkpoint hashes, the task, the sampler settings and the seed. The signature covers the video data
(a BMFF hash), so a changed byte reads back invalid. Signing works offline (no timestamp authority):
the certificates must outlive the files' use. c2pa-python is the optional extra `c2pa`; without it
nothing here is called (the sampling job says its files are not signed, verify that it cannot read
manifests).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import lumiere_jax

GENERATION_LABEL = "org.lumiere_jax.generation"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
INSTALL_HINT = 'pip install "lumiere_jax[c2pa]"'
STATES = {"Trusted": "trusted", "Valid": "valid_unknown_signer", "Invalid": "invalid"}


def c2pa_module():
    """The c2pa package, or None when the `c2pa` extra is not installed."""
    try:
        import c2pa
    except ImportError:
        return None
    return c2pa


@dataclasses.dataclass(frozen=True)
class SigningCredentials:
    """A private key and its certificate chain (signer first, then its CA), checked to belong together."""

    key_pem: bytes
    chain_pem: bytes
    algorithm: str  # a c2pa.C2paSigningAlg name, from the key's type
    signer: str  # the signing certificate's common name (else its subject), for messages

    @classmethod
    def load(cls, key_path: str, chain_path: str) -> "SigningCredentials":
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        key_pem, chain_pem = _read(key_path, "provenance.signing_key"), _read(chain_path, "provenance.certificate_chain")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"provenance.signing_key {key_path} is not an unencrypted PEM private key ({e})") from e
        algorithm = signing_algorithm(key, key_path)
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as e:
            raise ValueError(f"provenance.certificate_chain {chain_path} holds no PEM certificates ({e})") from e
        if len(chain) < 2:
            raise ValueError(f"provenance.certificate_chain {chain_path} holds one certificate; C2PA needs the signing "
                             "certificate followed by the CA that issued it (make-dev-cert writes such a chain)")
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if (chain[0].public_key().public_bytes(serialization.Encoding.DER, public)
                != key.public_key().public_bytes(serialization.Encoding.DER, public)):
            raise ValueError(f"provenance.signing_key {key_path} is not the key of the first certificate in "
                             f"provenance.certificate_chain {chain_path} ({chain[0].subject.rfc4514_string()})")
        names = chain[0].subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        return cls(key_pem, chain_pem, algorithm, names[0].value if names else chain[0].subject.rfc4514_string())


def _read(path: str, what: str) -> bytes:
    if not path:
        raise ValueError(f"{what} is not set")
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{what} {path} cannot be read ({e.strerror})") from e


def signing_algorithm(key, key_path: str) -> str:
    """The C2PA signature algorithm for a private key: ES256/384/512 by EC curve, PS256 for RSA, ED25519."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "PS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    kind = getattr(getattr(key, "curve", None), "name", type(key).__name__)
    raise ValueError(f"provenance.signing_key {key_path} is a {kind} key; C2PA signs with EC P-256/P-384/P-521, "
                     "RSA or Ed25519 keys")


def manifest(title: str, generation: dict) -> dict:
    """The manifest definition of one generated video (`generation`: GENERATION_LABEL's content)."""
    agent = {"name": "lumiere_jax", "version": lumiere_jax.__version__}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": "video/mp4",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [
                {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA, "softwareAgent": agent}]}},
            {"label": GENERATION_LABEL, "data": generation},
        ],
    }


def sign_mp4(credentials: SigningCredentials, source: pathlib.Path, dest: pathlib.Path, generation: dict) -> None:
    """Writes `source` with a signed manifest to `dest` (c2pa's errors become ValueErrors naming the signer)."""
    c2pa = c2pa_module()
    info = c2pa.C2paSignerInfo(getattr(c2pa.C2paSigningAlg, credentials.algorithm), credentials.chain_pem,
                               credentials.key_pem, None)
    try:
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest(dest.name, generation)) as builder:
            builder.sign_file(str(source), str(dest), signer)
    except c2pa.C2paError as e:
        raise ValueError(f"C2PA signing with the certificate of {credentials.signer} failed: {e}") from e


def read_manifest(path: pathlib.Path, trust_anchors_pem: str) -> dict:
    """A file's Content Credentials: {"state": trusted | valid_unknown_signer | invalid | none, ...} with the
    failure codes of an invalid one and what the active manifest says."""
    c2pa = c2pa_module()
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors_pem:
        settings["trust"] = {"user_anchors": trust_anchors_pem}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(str(path), context=context)
            if reader is None:
                return {"state": "none"}
            with reader:
                state, results, store = (reader.get_validation_state(), reader.get_validation_results(),
                                         json.loads(reader.json()))
    except c2pa.C2paError.NotSupported:
        return {"state": "none", "reason": f"C2PA does not cover {path.suffix or 'this'} files"}
    except c2pa.C2paError as e:
        return {"state": "invalid", "failures": [f"unreadable: {e}"]}
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    failures = [f.get("code") for f in (results or {}).get("activeManifest", {}).get("failure", [])]
    return {"state": STATES.get(str(state), str(state).lower()), "failures": failures,
            "signer": active.get("signature_info", {}),
            "claim_generator": active.get("claim_generator_info", []),
            "actions": (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", []),
            "generation": assertions.get(GENERATION_LABEL)}
