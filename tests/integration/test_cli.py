"""The skuvid command as a user runs it: exit codes, JSON on stdout, never a traceback."""

from __future__ import annotations

import os
import subprocess
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
    result = skuvid("render", product_file(tmp_path, CATALOG[0]), "--out", str(out), tmp_path=tmp_path)
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
