"""A C2PA test signing chain made at test time with ``cryptography``: a CA and an ES256 end-entity certificate
with the profile C2PA requires (not a CA, digitalSignature, emailProtection EKU). Nothing is checked in."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SigningChain:
    chain_file: Path  # signer, then CA (PEM)
    key_file: Path  # signer's key (PKCS#8 PEM)
    ca_pem: str  # the trust anchor to validate against

    def settings_fields(self) -> dict[str, Path]:
        return {"c2pa_cert_chain_file": self.chain_file, "c2pa_private_key_file": self.key_file}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "skuvid tests")])


def _usage(*, signer: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=signer, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not signer, crl_sign=not signer,
                         encipher_only=False, decipher_only=False)


def make_chain(folder: Path, *, ekus: tuple = (ExtendedKeyUsageOID.EMAIL_PROTECTION,), signer_is_ca: bool = False,
               signer_usage: bool = True) -> SigningChain:
    """Write ``chain.pem`` and ``signer.key`` into ``folder``; the keyword arguments break the profile on purpose."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("skuvid test CA")).issuer_name(_name("skuvid test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(signer=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    builder = (x509.CertificateBuilder().subject_name(_name("skuvid test signer")).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=signer_is_ca, path_length=None), critical=True)
               .add_extension(_usage(signer=signer_usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    leaf = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    chain_file, key_file = folder / "chain.pem", folder / "signer.key"
    chain_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return SigningChain(chain_file, key_file, ca.public_bytes(pem).decode())
