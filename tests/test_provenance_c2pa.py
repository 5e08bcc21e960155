"""C2PA Content Credentials (c2pa-python, the `c2pa` extra): a development certificate, a signed MP4 that
reads back trusted, tampering and remuxing, and signing credentials that do not load."""
import stat

import av
import ml_collections
import numpy as np
import pytest

from lumiere_jax.provenance import credentials, devcert
from lumiere_jax.provenance.__main__ import main as provenance_cli
from lumiere_jax.provenance.stamp import Stamp
from lumiere_jax.provenance.verify import verify_file
from lumiere_jax.provenance.watermark import Watermark
from lumiere_jax.sample.video_io import write_mp4

c2pa = pytest.importorskip("c2pa", reason="the c2pa extra (./test.sh installs it)")
x509 = pytest.importorskip("cryptography.x509")
GENERATION = {"base_checkpoint_sha256": "ab" * 32, "task": "i2v", "seed": 7, "sampler": {"sampler": "ddim"}}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return devcert.make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def signed(certs, tmp_path_factory):
    """A 16-frame 64x64 clip written by the job's MP4 writer and signed with the dev certificate."""
    root = tmp_path_factory.mktemp("signed")
    frames = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3)).astype(np.uint8)
    write_mp4(root / "clip.mp4", frames, 16.0)
    key = credentials.SigningCredentials.load(str(certs["key"]), str(certs["chain"]))
    credentials.sign_mp4(key, root / "clip.mp4", root / "signed.mp4", GENERATION)
    return root / "signed.mp4"


def provenance(**values) -> ml_collections.ConfigDict:
    from lumiere_jax.config import provenance_config

    config = provenance_config()
    config.update(values)
    return config


def test_dev_certificate_is_a_ca_and_an_end_entity_signer(certs):
    chain = x509.load_pem_x509_certificates(certs["chain"].read_bytes())
    anchor = x509.load_pem_x509_certificate(certs["anchor"].read_bytes())
    assert len(chain) == 2 and chain[1] == anchor and chain[0].issuer == anchor.subject
    ext = lambda cert, kind: cert.extensions.get_extension_for_class(kind).value  # noqa: E731
    assert ext(anchor, x509.BasicConstraints).ca and ext(anchor, x509.KeyUsage).key_cert_sign
    assert not ext(chain[0], x509.BasicConstraints).ca and ext(chain[0], x509.KeyUsage).digital_signature
    assert x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION in ext(chain[0], x509.ExtendedKeyUsage)
    assert (ext(chain[0], x509.AuthorityKeyIdentifier).key_identifier
            == ext(anchor, x509.SubjectKeyIdentifier).digest)
    chain[0].verify_directly_issued_by(anchor)
    assert stat.S_IMODE(certs["key"].stat().st_mode) == 0o600
    assert "no one else trusts it" in (certs["key"].parent / "NOTICE.txt").read_text()


def test_signed_mp4_reads_back_trusted_by_its_anchor_only(signed, certs):
    trusted = credentials.read_manifest(signed, certs["anchor"].read_text())
    assert trusted["state"] == "trusted" and trusted["failures"] == [] and trusted["generation"] == GENERATION
    assert trusted["actions"][0]["digitalSourceType"] == credentials.TRAINED_ALGORITHMIC_MEDIA
    assert trusted["signer"]["common_name"] == "lumiere_jax development signer"
    other = devcert.make_dev_certificates(signed.parent / "other")
    assert credentials.read_manifest(signed, other["anchor"].read_text())["state"] == "valid_unknown_signer"
    assert credentials.read_manifest(signed, "")["state"] == "valid_unknown_signer"


def top_level_box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level ISO-BMFF box of `kind` (32-bit sizes: small files)."""
    offset = 0
    while offset < len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        if data[offset + 4:offset + 8] == kind:
            return offset, size
        offset += size
    raise AssertionError(f"no {kind} box")


def test_a_flipped_byte_reads_invalid_and_a_remux_drops_the_manifest(signed, certs, tmp_path):
    data = bytearray(signed.read_bytes())
    offset, size = top_level_box(bytes(data), b"mdat")
    data[offset + size // 2] ^= 0xFF
    tampered = tmp_path / "tampered.mp4"
    tampered.write_bytes(bytes(data))
    result = credentials.read_manifest(tampered, certs["anchor"].read_text())
    assert result["state"] == "invalid" and "assertion.bmffHash.mismatch" in result["failures"]
    remuxed = tmp_path / "remuxed.mp4"
    with av.open(str(signed)) as source, av.open(str(remuxed), "w") as dest:
        stream = dest.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dest.mux(packet)
    assert credentials.read_manifest(remuxed, certs["anchor"].read_text()) == {"state": "none"}


def test_verify_without_the_c2pa_extra_says_manifests_are_not_checked(signed, monkeypatch):
    monkeypatch.setattr(credentials, "c2pa_module", lambda: None)
    entry = verify_file(signed, Watermark("lumiere_jax"), "")
    assert entry["c2pa"]["state"] == "not_checked" and "c2pa-python is not installed" in entry["c2pa"]["reason"]


def test_signing_credentials_that_do_not_load_are_named(certs, tmp_path):
    key, chain = str(certs["key"]), str(certs["chain"])
    assert Stamp(provenance(signing_key=key, certificate_chain=chain)).credentials.algorithm == "ES256"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file")
    leaf_only = tmp_path / "leaf.pem"
    chain_text = certs["chain"].read_text()
    leaf_only.write_text(chain_text[:chain_text.index("-----END CERTIFICATE-----") + 26])
    other = devcert.make_dev_certificates(tmp_path / "other")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k1 = tmp_path / "secp256k1.pem"
    k1.write_bytes(ec.generate_private_key(ec.SECP256K1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cases = [
        (dict(signing_key=str(tmp_path / "missing.pem"), certificate_chain=chain), FileNotFoundError,
         "provenance.signing_key .*missing.pem cannot be read"),
        (dict(signing_key=str(garbage), certificate_chain=chain), ValueError,
         "provenance.signing_key .*garbage.pem is not an unencrypted PEM private key"),
        (dict(signing_key=key, certificate_chain=str(garbage)), ValueError,
         "provenance.certificate_chain .*garbage.pem holds no PEM certificates"),
        (dict(signing_key=key, certificate_chain=str(leaf_only)), ValueError,
         "leaf.pem holds one certificate; C2PA needs the signing certificate followed by the CA"),
        (dict(signing_key=str(other["key"]), certificate_chain=chain), ValueError,
         "provenance.signing_key .*other/signer_key.pem is not the key of the first certificate"),
        (dict(signing_key=str(k1), certificate_chain=chain), ValueError,
         "secp256k1.pem is a secp256k1 key; C2PA signs with EC P-256"),
        (dict(signing_key=key), ValueError, "provenance.certificate_chain is not set"),
    ]
    for values, error, message in cases:
        with pytest.raises(error, match=message):
            Stamp(provenance(**values))


def test_a_certificate_c2pa_refuses_fails_before_sampling(tmp_path):
    """An end-entity certificate without the emailProtection key purpose: it loads, and C2PA refuses it
    on the trial signature, before any model is built."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = devcert._name("test CA")
    ca = (devcert._builder(ca_name, ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(devcert._key_usage(key_cert_sign=True), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (devcert._builder(devcert._name("no purpose"), ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(devcert._key_usage(digital_signature=True), critical=True).sign(ca_key, hashes.SHA256()))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    with pytest.raises(ValueError, match="provenance.certificate_chain .*chain.pem is refused by C2PA .*emailProtection"):
        Stamp(provenance(signing_key=str(tmp_path / "key.pem"), certificate_chain=str(tmp_path / "chain.pem")))


def test_make_dev_cert_command(tmp_path, capsys):
    assert provenance_cli(["make-dev-cert", str(tmp_path / "dev")]) == 0
    out = capsys.readouterr().out
    assert f"--config.provenance.signing_key={tmp_path / 'dev' / 'signer_key.pem'}" in out and "no one else" in out
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["NOTICE.txt", "ca.pem", "signer_chain.pem",
                                                                  "signer_key.pem"]
    key = (tmp_path / "dev" / "signer_key.pem").read_bytes()
    assert provenance_cli(["make-dev-cert", str(tmp_path / "dev")]) == 2
    assert "already exist: choose an empty directory" in capsys.readouterr().err
    assert (tmp_path / "dev" / "signer_key.pem").read_bytes() == key  # never overwritten
