"""``skuvid bench cli``: how fast ``skuvid render`` refuses bad input, next to importing torch + diffusers.

Both are timed as fresh processes in the same run (median of ``runs`` each), so the ratio holds on any
machine: a refusal must not pay for the model's libraries. Goal: ``ratio`` < 0.5.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BAD_PRODUCTS = {
    "invalid_json": b"{not json",
    "unsafe_content": '{"sku": "SKU-1", "title": "仿真枪玩具", "category": "toys"}'.encode(),
    "forbidden_image": b'{"sku": "SKU-2", "title": "mug", "category": "kitchen", "image_url": "http://127.0.0.1/a.png"}',
}


def _seconds(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, capture_output=True, check=False, timeout=300)
    return time.perf_counter() - started


def run(runs: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="skuvid-bench-cli-") as tmp:
        files = []
        for name, content in BAD_PRODUCTS.items():
            path = Path(tmp) / f"{name}.json"
            path.write_bytes(content)
            files.append(path)
        reject = [
            _seconds([sys.executable, "-m", "skuvid.cli", "render", str(path), "--out", str(Path(tmp) / "out")])
            for _ in range(runs) for path in files
        ]
        imports = [_seconds([sys.executable, "-c", "import torch, diffusers"]) for _ in range(runs)]
    reject_s, import_s = statistics.median(reject), statistics.median(imports)
    return {"reject_s": round(reject_s, 3), "import_torch_diffusers_s": round(import_s, 3),
            "ratio": round(reject_s / import_s, 3), "runs": runs, "cases": sorted(BAD_PRODUCTS)}


if __name__ == "__main__":
    print(run())
