"""Content credentials: a labelled MP4 gets a C2PA manifest that validates against a test CA made here, in the
box order C2PA requires, with the AIGC metadata intact; one changed byte fails validation; bad keys fail at
start-up; no key, no signing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from inference import c2pa_sign
from inference.c2pa_sign import (
    DIGITAL_SOURCE_TYPE,
    GENERATION_ASSERTION,
    ContentCredentials,
    SigningKey,
    read_credentials,
    top_level_boxes,
)
from inference.encode import file_digest, probe_mp4
from inference.fonts import find_cjk_font
from inference.labels import AigcLabel, read_aigc
from inference.postprocess import finish_video
from skuvid.errors import FatalError
from skuvid.settings import Settings
from tests.credentials import make_chain

KEY = "ab" * 32
LABEL = AigcLabel(content_producer="skuvid", produce_id=KEY, propagate_id=KEY, reserved_code1="tiny")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_chain(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def credentials(chain) -> ContentCredentials:
    return ContentCredentials.from_settings(Settings(**chain.settings_fields()))


@pytest.fixture
def renditions(tmp_path):
    """A real labelled rendition pair (mark, AIGC metadata, feed cut) as the render job writes it."""
    frames = np.random.default_rng(3).integers(0, 255, (9, 128, 224, 3), dtype=np.uint8)
    return finish_video(frames, out_dir=tmp_path, basename="SKU-1-ab", mark_text="AI生成", corner="top-right",
                        font_path=find_cjk_font(None), captions=[], aigc=LABEL, fps=8, crf=30,
                        preset="ultrafast", feed_crop=True)


class _Request:  # the fields sign_renditions reads
    model, request_key, variant_id, sku = "tiny", KEY, "daily-a", "SKU-1"


def test_signed_mp4_validates_and_keeps_the_aigc_label(credentials, chain, renditions):
    before = probe_mp4(renditions.mp4.path)
    signed = credentials.sign_renditions(renditions, _Request())
    assert (signed.mp4.bytes, signed.mp4.sha256) == file_digest(signed.mp4.path)
    assert signed.mp4.sha256 != renditions.mp4.sha256 and signed.feed_mp4 is not None

    for path in (signed.mp4.path, signed.feed_mp4.path):
        report = read_credentials(path, trust_anchors_pem=chain.ca_pem)
        assert report.state == "Trusted", report.failures
        assert report.failures == []
        assert "assertion.bmffHash.match" in report.successes and "claimSignature.validated" in report.successes
        [action] = report.assertion("c2pa.actions")["actions"]
        assert action["action"] == "c2pa.created" and action["digitalSourceType"] == DIGITAL_SOURCE_TYPE
        assert action["softwareAgent"]["name"] == "tiny"
        assert report.assertion(GENERATION_ASSERTION).items() >= {"model": "tiny", "request_key": KEY}.items()
        # C2PA's uuid box right after ftyp, moov still before mdat (+faststart), nothing else moved.
        boxes = top_level_boxes(path)
        assert boxes[:3] == ["ftyp", "c2pa", "moov"] and boxes.index("moov") < boxes.index("mdat")
        assert read_aigc(path) == LABEL

    after = probe_mp4(signed.mp4.path)
    assert (after.num_frames, after.width, after.height, after.codec) == (
        before.num_frames, before.width, before.height, before.codec)


def test_without_the_trust_anchor_the_signature_is_valid_but_untrusted(credentials, renditions):
    signed = credentials.sign_renditions(renditions, _Request())
    report = read_credentials(signed.mp4.path)
    assert report.state == "Valid"
    assert "claimSignature.validated" in report.successes


@pytest.mark.parametrize("where", ["mdat", "moov"])
def test_one_changed_byte_fails_validation(credentials, chain, renditions, where):
    signed = credentials.sign_renditions(renditions, _Request())
    data = bytearray(signed.mp4.path.read_bytes())
    if where == "mdat":
        at = data.index(b"mdat") + 200
    else:
        at = data.index(b'"ProduceID"', data.index(b"moov")) + 14  # a digit of the AIGC label in moov/udta
    data[at] ^= 0x01
    signed.mp4.path.write_bytes(bytes(data))
    report = read_credentials(signed.mp4.path, trust_anchors_pem=chain.ca_pem)
    assert report.state == "Invalid"
    assert "assertion.bmffHash.mismatch" in report.failures


def test_no_key_configured_signs_nothing_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(c2pa_sign, "_said_unsigned", False)
    with caplog.at_level(logging.INFO, logger="inference.c2pa_sign"):
        assert ContentCredentials.from_settings(Settings()) is None
        assert ContentCredentials.from_settings(Settings()) is None
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "no C2PA signing key" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"signer_is_ca": True}, "is a CA certificate"),
        ({"signer_usage": False}, "lacks digitalSignature"),
        ({"ekus": ()}, "no extended key usage"),
        ({"ekus": (ExtendedKeyUsageOID.SERVER_AUTH,)}, "none that C2PA accepts"),
    ],
)
def test_a_chain_outside_the_c2pa_profile_fails_at_start_up(tmp_path, broken, message):
    bad = make_chain(tmp_path, **broken)
    with pytest.raises(FatalError, match=message):
        SigningKey.load(bad.chain_file, bad.key_file)


def test_key_and_chain_must_belong_together_and_both_be_set(tmp_path, chain):
    other = make_chain(tmp_path / "other")
    with pytest.raises(FatalError, match="not the key of the signing certificate"):
        SigningKey.load(chain.chain_file, other.key_file)
    with pytest.raises(FatalError, match="both"):
        ContentCredentials.from_settings(Settings(c2pa_cert_chain_file=chain.chain_file))
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_text(chain.chain_file.read_text().split("-----END CERTIFICATE-----")[0]
                         + "-----END CERTIFICATE-----\n")
    with pytest.raises(FatalError, match="self-signed"):
        SigningKey.load(leaf_only, chain.key_file)
    with pytest.raises(FatalError, match="cannot read"):
        SigningKey.load(tmp_path / "missing.pem", chain.key_file)


def test_render_job_signs_what_it_publishes(chain, tmp_path):
    """The render job's finishing stage runs the signer after encoding (tiny frames, no model)."""
    from inference.render_job import RenderJob, _Attempt
    from inference.quality import GateResult

    settings = Settings(model="tiny", **chain.settings_fields())
    job = RenderJob(settings, generator=None, gate=None)  # _finish needs neither
    frames = np.random.default_rng(5).integers(0, 255, (9, 96, 160, 3), dtype=np.uint8)
    gate = GateResult(passed=True, score=1.0, scores={}, failures=[], best_frame=0)
    request = _tiny_request()
    rendered = job._finish(request, _Attempt(frames, gate, 7), 1, tmp_path)
    report = read_credentials(Path(rendered.renditions.mp4.path), trust_anchors_pem=chain.ca_pem)
    assert report.state == "Trusted"
    assert report.assertion(GENERATION_ASSERTION)["request_key"] == request.request_key
    assert read_aigc(rendered.renditions.mp4.path).produce_id == request.request_key


def _tiny_request():
    from consumers.planning import Planner
    from inference.prompt import PromptEngine
    from tests.unit.test_api_index import product

    [request] = Planner(PromptEngine.load(), Settings(model="tiny")).plan(
        product("SKU-C2PA").snapshot(), source_event_id="evt-c2pa").requests
    return request

