"""A local certificate authority and a signing certificate for trying C2PA signing: trusted by no one else.

C2PA validators refuse a lone self-signed certificate; they want an end-entity certificate (not a CA,
key usage digitalSignature, extended key usage emailProtection, subject and authority key
identifiers) issued by a CA (DESIGN.md section 8). `make_dev_certificates(DIR)` writes:
  ca.pem          the CA's certificate: the trust anchor to give --mode=verify (verify.trust_anchors)
  signer_key.pem  the signing certificate's private key (provenance.signing_key)
  signer_chain.pem the signing certificate followed by the CA's (provenance.certificate_chain)
The CA's private key is not kept: nothing else can be issued under it. Both certificates are valid for
DEV_YEARS years, since signing here has no timestamp authority to vouch for a signature's time.
"""
from __future__ import annotations

import datetime
import pathlib

DEV_YEARS = 10
FILES = {"anchor": "ca.pem", "key": "signer_key.pem", "chain": "signer_chain.pem"}
NOTICE = ("A development CA made by `python -m lumiere_jax.provenance make-dev-cert`: no one else trusts it. Files signed "
          "with signer_key.pem read back 'trusted' only where ca.pem is configured as a trust anchor "
          "(--config.verify.trust_anchors); use a certificate from a CA others trust for published videos.\n")


def make_dev_certificates(directory, name: str = "lumiere_jax development") -> dict[str, pathlib.Path]:
    """Writes the CA certificate, the signer's key and chain (FILES) and a NOTICE into `directory`
    (refused when any exists: a key is never overwritten); returns the paths by role."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = pathlib.Path(directory)
    paths = {role: directory / file for role, file in FILES.items()}
    existing = [str(p) for p in [*paths.values(), directory / "NOTICE.txt"] if p.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist: choose an empty directory (keys are never "
                              "overwritten)")
    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{name} CA")
    ca = (_builder(ca_name, ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
          .sign(ca_key, hashes.SHA256()))
    signer = (_builder(_name(f"{name} signer"), ca_name, signer_key.public_key())
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_key_usage(digital_signature=True), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    directory.mkdir(parents=True, exist_ok=True)
    paths["key"].write_bytes(signer_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    paths["chain"].write_bytes(pem(signer) + pem(ca))
    paths["anchor"].write_bytes(pem(ca))
    (directory / "NOTICE.txt").write_text(NOTICE)
    return paths


def _name(common_name: str):
    from cryptography import x509

    return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "lumiere_jax development (untrusted)")])


def _builder(subject, issuer, public_key):
    """A certificate builder for DEV_YEARS from yesterday (clock skew), with a subject key identifier."""
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365 * DEV_YEARS))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _key_usage(digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False):
    from cryptography import x509

    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign, crl_sign=crl_sign,
                         encipher_only=False, decipher_only=False)
