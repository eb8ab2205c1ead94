"""``skuvid render PRODUCT.json --out DIR``: one product to ``DIR/<sku>.mp4`` without Kafka.

The same planning, model, gate and labelling code as the services; only the transport is missing.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import orjson

from consumers.delivery import upload
from consumers.planning import Planner
from consumers.service import load_render_job
from inference.prompt import PromptEngine
from inference.render_job import RenderError
from schemas.codec import DecodeError, validate
from schemas.events import ProductCreated, ProductSnapshot, Reason, VideoReady
from skuvid.settings import Settings
from skuvid.storage import LocalStore


class RenderOneError(Exception):
    def __init__(self, reason: Reason, message: str, *, bad_input: bool, details: dict | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.bad_input = bad_input
        self.details = details or {}


def read_product(path: Path, max_bytes: int) -> tuple[ProductSnapshot, str]:
    """The snapshot and a source id from a product.created event, or from bare product fields."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RenderOneError(Reason.INVALID_JSON, f"cannot read {path}: {exc.strerror}", bad_input=True) from None
    if len(raw) > max_bytes:
        raise RenderOneError(Reason.OVERSIZED_PAYLOAD, f"{path} is {len(raw)} bytes, limit {max_bytes}", bad_input=True)
    try:
        data = orjson.loads(raw)
        if isinstance(data, dict) and "event_id" in data:
            event = validate(ProductCreated, data)
            return event.snapshot(), event.event_id
        return validate(ProductSnapshot, data), f"file:{path.name}"
    except orjson.JSONDecodeError as exc:
        raise RenderOneError(Reason.INVALID_JSON, f"not JSON: {exc}", bad_input=True) from None
    except DecodeError as exc:
        raise RenderOneError(exc.reason, exc.message, bad_input=True) from None


def render_product_file(path: Path, out_dir: Path, settings: Settings) -> VideoReady:
    product, source_id = read_product(path, settings.max_payload_bytes)
    planner = Planner(PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy), settings)
    plan = planner.plan(product, source_event_id=source_id)
    if plan.failures:
        failed = plan.failures[0]
        raise RenderOneError(failed.reason, failed.message, bad_input=True, details=dict(failed.details))
    request = plan.requests[0]
    job = load_render_job(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skuvid-render-") as tmp:
        try:
            rendered = job.render(request, Path(tmp))
        except RenderError as exc:
            raise RenderOneError(exc.reason, exc.message, bad_input=False, details=exc.details) from None
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            if reason is None:
                raise
            raise RenderOneError(reason, str(exc), bad_input=False) from None
        store = _SkuNamedStore(out_dir, product.sku)
        return asyncio.run(upload(store, request, rendered, prefix="",
                                  content_producer=settings.label_content_producer))


class _SkuNamedStore(LocalStore):
    """A local store that names the files ``<sku>.mp4`` / ``.jpg`` / ``.json`` / ``.feed.mp4`` in one folder."""

    def __init__(self, root: Path, sku: str) -> None:
        super().__init__(root)
        self.sku = sku

    def _path(self, key: str) -> Path:
        extensions = Path(key).name.partition(".")[2]  # "mp4", "jpg", "json", "feed.mp4"
        return self.root / f"{self.sku}.{extensions}"
