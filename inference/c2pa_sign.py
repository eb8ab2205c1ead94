"""Content credentials (C2PA) for every published MP4: a signed manifest saying the video is AI-generated.

The manifest holds ``c2pa.actions`` with one ``c2pa.created`` action whose ``digitalSourceType`` is IPTC's
``trainedAlgorithmicMedia`` (the C2PA way to say "made by a generative model", software agent = the model),
and ``com.skuvid.generation`` with the model, the request key (also the AIGC ProduceID) and the variant.
It is signed with the key and certificate chain of ``Settings.c2pa_*`` (c2pa-python / c2pa-rs); with none
configured nothing is signed and the process says so once.

Where it goes (C2PA 2.x, ISO BMFF): a top-level ``uuid`` box (C2PA's UUID ``d8fec3d6-…``) right after
``ftyp`` and before ``moov``, so ``+faststart`` survives (moov still precedes mdat). The hard binding is
``c2pa.hash.bmff.v3``: every top-level box is hashed except the manifest's own ``uuid`` box (and ``ftyp``,
``free``, ``skip``, ``mfra``), so the visible mark, the frames and the ``AIGC`` metadata in ``moov/udta``
are all covered: one changed byte anywhere in them fails validation. The AIGC label stays where
``inference.labels`` put it; signing only inserts the box (c2pa-rs rewrites chunk offsets in ``moov``).

The signing certificate must fit C2PA's profile or validators reject the manifest: an end-entity
certificate (not a CA) with the ``digitalSignature`` key usage and an extended key usage C2PA accepts
(``emailProtection``, ``documentSigning`` or C2PA's claim-signing OID), issued by a CA whose certificate
follows it in the chain file. ``SigningKey.load`` checks all of it at start-up.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from inference.encode import file_digest
from schemas.events import Reason
from skuvid.errors import FatalError, SkuvidError
from skuvid.settings import Settings

if TYPE_CHECKING:
    from inference.postprocess import Renditions
    from schemas.events import VideoRequested

log = logging.getLogger(__name__)

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATION_ASSERTION = "com.skuvid.generation"
C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")
MP4 = "video/mp4"
# Extended key usages C2PA accepts for a claim signer (C2PA 2.x, "Certificate profile").
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
C2PA_CLAIM_SIGNING = ObjectIdentifier("1.3.6.1.4.1.62558.2.1")
ACCEPTED_EKUS = frozenset({ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING, C2PA_CLAIM_SIGNING})
_said_unsigned = False


class CredentialsError(SkuvidError):
    """One file could not be signed or read back."""

    reason = Reason.INVALID_OUTPUT


@dataclass(frozen=True)
class SigningKey:
    """The PEM chain (signer first, then its issuers) and private key the manifests are signed with."""

    chain_pem: str
    key_pem: str = field(repr=False)
    alg: str = "es256"
    tsa_url: str | None = None

    @classmethod
    def load(cls, chain_file: Path, key_file: Path, *, alg: str = "es256", tsa_url: str | None = None) -> SigningKey:
        """Read and check the chain and key. Raises ``FatalError`` naming the file and what is wrong with it:
        unreadable, not PEM, a chain of one (self-signed), a signer that is a CA or lacks ``digitalSignature``
        or an accepted extended key usage, a key that does not belong to the signing certificate."""
        try:
            chain_pem, key_pem = chain_file.read_text(), key_file.read_text()
        except OSError as exc:
            raise _config_error(f"cannot read {exc.filename}: {exc.strerror}") from None
        try:
            certs = x509.load_pem_x509_certificates(chain_pem.encode())
        except ValueError as exc:
            raise _config_error(f"{chain_file} is not a PEM certificate chain: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise _config_error(f"{key_file} is not an unencrypted PEM private key: {exc}") from None
        problem = signer_profile_problem(certs)
        if problem is not None:
            raise _config_error(f"{chain_file}: {problem}")
        if key.public_key().public_bytes(*_SPKI) != certs[0].public_key().public_bytes(*_SPKI):
            raise _config_error(f"{key_file} is not the key of the signing certificate in {chain_file}")
        return cls(chain_pem, key_pem, alg, tsa_url)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _config_error(message: str) -> FatalError:
    return FatalError(f"C2PA signing (SKUVID_C2PA_CERT_CHAIN_FILE / SKUVID_C2PA_PRIVATE_KEY_FILE): {message}",
                      reason=Reason.INVALID_PARAMS)


def signer_profile_problem(certs: list[x509.Certificate]) -> str | None:
    """What keeps ``certs`` (signer first) from being a C2PA signing chain, or None when it fits."""
    if len(certs) < 2:
        return "the chain needs the signing certificate followed by its CA certificate (C2PA refuses self-signed)"
    leaf = certs[0]
    if leaf.issuer != certs[1].subject:
        return "the second certificate did not issue the first: list the signer first, then its issuers"
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "the signing certificate is a CA certificate; use an end-entity certificate"
    except x509.ExtensionNotFound:
        pass
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "the signing certificate has no key usage extension (needs digitalSignature)"
    if not usage.digital_signature:
        return "the signing certificate's key usage lacks digitalSignature"
    try:
        ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return "the signing certificate has no extended key usage (needs emailProtection or documentSigning)"
    if not ekus & ACCEPTED_EKUS:
        return "the signing certificate's extended key usages are none that C2PA accepts " \
               "(emailProtection, documentSigning, C2PA claim signing)"
    return None


def manifest_definition(*, producer: str, model: str, request_key: str, variant_id: str, title: str) -> dict[str, Any]:
    """The C2PA manifest of one rendered video (c2pa-rs manifest definition JSON)."""
    return {
        "claim_generator_info": [{"name": producer, "version": "1"}],
        "format": MP4,
        "title": title[:200],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created",
                "digitalSourceType": DIGITAL_SOURCE_TYPE,
                "softwareAgent": {"name": model[:200]},
            }]}},
            {"label": GENERATION_ASSERTION, "data": {
                "model": model, "request_key": request_key, "variant_id": variant_id, "producer": producer,
                "aigc_metadata": "GB 45438-2025 implicit label in the MP4 metadata key AIGC (ProduceID = request_key)",
            }},
        ],
    }


class ContentCredentials:
    """Signs MP4s in place with one ``SigningKey``. Safe to call from several threads: each call builds its own
    native signer and builder."""

    def __init__(self, key: SigningKey, *, producer: str = "skuvid") -> None:
        self.key = key
        self.producer = producer

    @classmethod
    def from_settings(cls, settings: Settings) -> ContentCredentials | None:
        """The configured signer, checked at start-up (``FatalError`` on a bad key or chain); None, logged once
        per process, when no key is configured. Setting only one of the two files is a configuration error."""
        chain, key = settings.c2pa_cert_chain_file, settings.c2pa_private_key_file
        if chain is None and key is None:
            global _said_unsigned
            if not _said_unsigned:
                log.info("content credentials off: no C2PA signing key configured (SKUVID_C2PA_CERT_CHAIN_FILE, "
                         "SKUVID_C2PA_PRIVATE_KEY_FILE); MP4s carry the visible mark and AIGC metadata only")
                _said_unsigned = True
            return None
        if chain is None or key is None:
            raise _config_error("set both the certificate chain and the private key, or neither")
        signing_key = SigningKey.load(chain, key, alg=settings.c2pa_signing_alg, tsa_url=settings.c2pa_tsa_url)
        credentials = cls(signing_key, producer=settings.label_content_producer)
        credentials._signer().close()  # the native library accepts the key and chain, or fails now
        log.info("content credentials on: MP4s are signed by %s", _subject(signing_key.chain_pem))
        return credentials

    def _signer(self):
        import c2pa  # noqa: PLC0415 - the native library loads only where videos are signed

        info = c2pa.C2paSignerInfo(self.key.alg, self.key.chain_pem.encode(), self.key.key_pem.encode(),
                                   self.key.tsa_url)
        try:
            return c2pa.Signer.from_info(info)
        except c2pa.C2paError as exc:
            raise _config_error(f"the C2PA library refuses the key or chain: {exc}") from None

    def sign_mp4(self, path: Path, *, model: str, request_key: str, variant_id: str, title: str) -> None:
        """Embed a signed manifest into the MP4 at ``path`` (replaced atomically). Raises CredentialsError."""
        import c2pa  # noqa: PLC0415

        manifest = manifest_definition(producer=self.producer, model=model, request_key=request_key,
                                       variant_id=variant_id, title=title)
        partial = path.with_name(f".{path.name}.c2pa")
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        try:
            with self._signer() as signer, c2pa.Builder(manifest, context) as builder:
                with open(path, "rb") as source, open(partial, "w+b") as dest:
                    builder.sign(signer, MP4, source, dest)
            os.replace(partial, path)
        except c2pa.C2paError as exc:
            raise CredentialsError(f"signing {path.name} failed: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
            context.close()

    def sign_renditions(self, renditions: Renditions, request: VideoRequested) -> Renditions:
        """Sign the MP4 and the feed cut of one request; the files' sizes and digests are measured again."""
        signed = {}
        for name in ("mp4", "feed_mp4"):
            encoded = getattr(renditions, name)
            if encoded is None:
                continue
            self.sign_mp4(encoded.path, model=request.model, request_key=request.request_key,
                          variant_id=request.variant_id, title=f"{request.sku} {request.variant_id}")
            size, digest = file_digest(encoded.path)
            signed[name] = dataclasses.replace(encoded, bytes=size, sha256=digest)
        return dataclasses.replace(renditions, **signed)


@dataclass(frozen=True)
class CredentialsReport:
    """A manifest read back: the validation state (``Trusted``, ``Valid`` or ``Invalid``), the active manifest
    and the validation status codes."""

    state: str | None
    manifest: dict[str, Any] | None
    failures: list[str]
    successes: list[str]

    def assertion(self, label: str) -> dict[str, Any] | None:
        for assertion in (self.manifest or {}).get("assertions", []):
            if assertion.get("label") in (label, f"{label}.v2"):
                return assertion.get("data")
        return None


def read_credentials(path: Path, *, trust_anchors_pem: str | None = None) -> CredentialsReport:
    """Read and validate the manifest of ``path``; ``trust_anchors_pem``: root certificates to trust besides the
    library's list (then a good chain reads ``Trusted``). Raises CredentialsError when there is no manifest."""
    import c2pa  # noqa: PLC0415

    settings: dict[str, Any] = {"verify": {"verify_trust": True}}
    if trust_anchors_pem:
        settings["trust"] = {"user_anchors": trust_anchors_pem}
    with c2pa.Context.from_dict(settings) as context, open(path, "rb") as stream:
        try:
            with c2pa.Reader(MP4, stream, context=context) as reader:
                results = reader.get_validation_results() or {}
                active = results.get("activeManifest", {}) if isinstance(results, dict) else {}
                return CredentialsReport(
                    state=reader.get_validation_state(), manifest=reader.get_active_manifest(),
                    failures=[s["code"] for s in active.get("failure", [])],
                    successes=[s["code"] for s in active.get("success", [])],
                )
        except c2pa.C2paError as exc:
            raise CredentialsError(f"{path.name} has no readable C2PA manifest: {exc}") from exc


def top_level_boxes(path: Path) -> list[str]:
    """The top-level ISO BMFF boxes of ``path`` in file order; the C2PA manifest box reads ``c2pa``."""
    names = []
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        at = handle.seek(0)
        while at + 8 <= end:
            size, kind = struct.unpack(">I4s", handle.read(8))
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", handle.read(8))[0], 16
            elif size == 0:
                size = end - at
            if kind == b"uuid":
                handle.seek(at + header)
                kind = b"c2pa" if handle.read(16) == C2PA_UUID else b"uuid"
            names.append(kind.decode("latin-1"))
            if size < header:
                break
            at = handle.seek(at + size)
    return names


def _subject(chain_pem: str) -> str:
    try:
        return x509.load_pem_x509_certificates(chain_pem.encode())[0].subject.rfc4514_string()
    except ValueError:
        return "?"

