"""The skuvid command as a user runs it: exit codes, JSON on stdout, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import sys
from pathlib import Path

import av
import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
CATALOG = (REPO / "tests" / "data" / "catalog.jsonl").read_bytes().splitlines()


def skuvid(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SKUVID_MODEL": "tiny", "SKUVID_TINY_MODEL_DIR": str(REPO / ".cache" / "tiny-wan2.2"),
           "SKUVID_TINY_CLIP_DIR": str(REPO / ".cache" / "tiny-clip"), "SKUVID_IMAGE_FILE_ROOT": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "skuvid.cli", *args], capture_output=True, cwd=REPO, env=env,
                          timeout=300, check=False)


def product_file(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "product.json"
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "invalid_json"),
        (orjson.dumps(orjson.loads(CATALOG[1]) | {"hot": "yes"}), "schema_violation"),
        (orjson.dumps({"sku": "SKU-1", "title": "仿真枪玩具", "category": "toys"}), "unsafe_content"),
        (orjson.dumps({"sku": "SKU-2", "title": "   ", "category": "generic"}), "empty_content"),
    ],
)
def test_render_bad_input_exits_2_with_reason(tmp_path, content, reason):
    result = skuvid("render", product_file(tmp_path, content), "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr.decode()
    payload = orjson.loads(result.stdout)
    assert payload["reason"] == reason and payload["message"]
    assert b"Traceback" not in result.stderr


def test_render_writes_sku_mp4_and_prints_video_ready(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "tests" / "data" / "images").mkdir(parents=True)  # its file: path is relative to the product file
    shutil.copy(REPO / "tests" / "data" / "images" / "SKU-1001.png", tmp_path / "tests" / "data" / "images")
    result = skuvid("render", product_file(tmp_path, CATALOG[0]), "--out", str(out), tmp_path=tmp_path,
                    SKUVID_IMAGE_FILE_ROOT=str(tmp_path))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    ready = orjson.loads(result.stdout)
    sku = orjson.loads(CATALOG[0])["sku"]
    video = out / f"{sku}.mp4"
    assert ready["sku"] == sku and ready["video_url"] == video.as_uri()
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == ready["num_frames"]


def test_emit_reports_bad_lines_and_sends_none_of_them(tmp_path):
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"{broken\n")
    result = skuvid("emit", "product.created", str(feed), tmp_path=tmp_path, SKUVID_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert result.returncode == 2
    assert f"{feed}:1: invalid_json".encode() in result.stderr
    assert orjson.loads(result.stdout.splitlines()[-1])["sent"] == 0


@pytest.mark.parametrize(
    ("image_url", "reason_text"),
    [
        ("http://127.0.0.1:9/p.png", "non-public address"),
        ("http://[2002:7f00:1::1]:9/p.png", "non-public address"),
        ("ftp://example.com/p.png", "scheme"),
        ("file:missing.png", "file not found"),
    ],
)
def test_render_refuses_bad_image_urls_with_exit_2_before_loading_the_model(tmp_path, image_url, reason_text):
    product = {"sku": "SKU-9", "title": "不锈钢保温杯", "category": "kitchen", "image_url": image_url}
    result = skuvid("render", product_file(tmp_path, orjson.dumps(product)), "--out", str(tmp_path / "o"),
                    tmp_path=tmp_path, SKUVID_MODEL="nobody/no-such-model", SKUVID_IMAGE_FILE_ROOT=str(tmp_path))
    assert result.returncode == 2, result.stderr.decode()[-2000:]
    payload = orjson.loads(result.stdout)
    assert payload["reason"] == "image_fetch_failed" and reason_text in payload["message"]


def test_missing_and_unreadable_files_have_their_own_reason(tmp_path):
    for path in (tmp_path / "absent.json", tmp_path):  # a folder cannot be read as a file either
        result = skuvid("render", str(path), "--out", str(tmp_path / "o"), tmp_path=tmp_path)
        assert result.returncode == 2 and orjson.loads(result.stdout)["reason"] == "file_unreadable"
        assert b"Traceback" not in result.stderr


def test_relative_file_image_resolves_against_the_product_folder(tmp_path):
    from schemas.events import ProductSnapshot
    from skuvid.render_one import anchored

    product = ProductSnapshot(sku="S-1", title="t", category="3c", image_url="file:img/p.png")
    assert anchored(product, tmp_path).image_url == (tmp_path / "img" / "p.png").as_uri()
    absolute = product.model_copy(update={"image_url": "file:///srv/p.png"})
    assert anchored(absolute, tmp_path) == absolute


def test_default_model_without_weights_is_one_json_line_naming_the_setting(tmp_path):
    product = {"sku": "SKU-8", "title": "不锈钢保温杯", "category": "kitchen"}
    result = skuvid("render", product_file(tmp_path, orjson.dumps(product)), "--out", str(tmp_path / "o"),
                    tmp_path=tmp_path, SKUVID_MODEL="Wan-AI/Wan2.2-TI2V-5B-Diffusers", HF_HUB_OFFLINE="1")
    assert result.returncode == 1, result.stderr.decode()[-2000:]
    payload = orjson.loads(result.stdout)
    assert payload["reason"] == "model_unavailable" and "SKUVID_MODEL" in payload["message"]
    assert b"Traceback" not in result.stderr


def test_render_path_imports_no_kafka_client(tmp_path):
    """The composition root keeps Kafka out of `skuvid render`: the whole path, model load included."""
    product = product_file(tmp_path, orjson.dumps({"sku": "SKU-7", "title": "降噪耳机", "category": "3c"}))
    script = (
        "import sys; from skuvid.cli import main; code = main(['render', sys.argv[1], '--out', sys.argv[2]]);"
        "print([m for m in ('aiokafka', 'faust', 'mode') if m in sys.modules]); sys.exit(code)"
    )
    env = {**os.environ, "SKUVID_MODEL": "tiny", "SKUVID_TINY_MODEL_DIR": str(REPO / ".cache" / "tiny-wan2.2"),
           "SKUVID_TINY_CLIP_DIR": str(REPO / ".cache" / "tiny-clip")}
    result = subprocess.run([sys.executable, "-c", script, product, str(tmp_path / "o")], capture_output=True,
                            cwd=REPO, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().splitlines()[-1] == "[]"


def test_bad_product_is_refused_without_importing_torch(tmp_path):
    script = ("import sys; from skuvid.cli import main; code = main(['render', sys.argv[1], '--out', 'o']);"
              "print('torch' in sys.modules, 'diffusers' in sys.modules); sys.exit(code)")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script, product_file(tmp_path, b"{nope")], capture_output=True,
                            cwd=REPO, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stdout.decode().splitlines()[-1] == "False False", time.monotonic() - started


def test_emit_refuses_skuvid_own_topics_unless_allowed(tmp_path):
    feed = tmp_path / "forged.jsonl"
    feed.write_bytes(b"{}\n")
    result = skuvid("emit", "video.ready", str(feed), tmp_path=tmp_path, SKUVID_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert result.returncode == 2
    payload = orjson.loads(result.stdout)
    assert payload["reason"] == "invalid_input" and "--allow-internal" in payload["message"]
    allowed = skuvid("emit", "video.ready", str(feed), "--allow-internal", tmp_path=tmp_path,
                     SKUVID_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert b"schema_violation" in allowed.stderr  # past the topic check, refused by the schema
