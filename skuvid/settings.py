"""The one reader of the environment: every knob of skuvid is a field here (env var ``SKUVID_<FIELD>``).

Code takes a ``Settings`` instance as an argument; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TINY_MODEL = "tiny"
DEFAULT_MODEL = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"


class StoreKind(StrEnum):
    LOCAL = "local"
    S3 = "s3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKUVID_", extra="ignore", frozen=True, env_parse_none_str="null")

    # --- Kafka -------------------------------------------------------------------------------------------
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    kafka_client_id: str = "skuvid"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How every Kafka client skuvid creates connects to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism (SASL_PLAINTEXT / SASL_SSL only)."
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(default=None, description="A secret: never logged, never in repr.")
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle that signed the brokers' certificates.")
    kafka_ssl_certfile: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="Client private key (mutual TLS).")
    kafka_idempotent: bool = Field(default=True, description="Idempotent producer (off only for brokers without it).")
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="zstd",
        description="Codec of the record batches skuvid's producers write (consumers decode it; Kafka >= 2.1 for "
        "zstd). Planner requests shrink 12x under zstd at 2 us each; a fan-out cost the broker 3x less CPU "
        "(BENCHMARKS.md). aiokafka's lz4 is level 9: three times zstd's CPU for half its ratio.",
    )
    kafka_replication_factor: int = Field(default=1, ge=1, description="Replicas of topics the planner creates.")
    kafka_one_record_batches: bool = Field(
        default=False,
        description="Planner sends one record per batch: needed on tansu, whose end offsets are wrong for "
        "multi-record batches (the planner would recover its tables short).",
    )
    planner_group: str = "skuvid-planner"
    renderer_group: str = "skuvid-renderer"
    max_payload_bytes: int = Field(default=1_048_576, description="Larger input records are dead-lettered.")
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    max_poll_interval_ms: int = Field(default=1_800_000, description="Above the worst-case render (30 min).")

    # --- Planner -----------------------------------------------------------------------------------------
    planner_data_dir: Path = Path(".cache/planner")
    variants_per_product: int = Field(default=1, ge=1, le=8, description="A/B variants rendered per product.")
    planner_store: Literal["rocksdb", "memory"] = Field(
        default="rocksdb", description="Where the planner's tables live: RocksDB under planner_data_dir (a restart "
        "reads only the changelog written since), or memory (tests; a restart reads every changelog).",
    )
    planner_rocksdb_cache_mb: int = Field(default=16, ge=1, description="RocksDB block cache per table partition.")
    planner_batch_max: int = Field(default=500, ge=1, description="Product events planned per batch.")
    planner_coalesce_s: float = Field(
        default=10.0, ge=0, description="A SKU variant goes to a render lane at most once per this many seconds; "
        "newer plans meanwhile are held and the newest is sent when the window closes (0: off).",
    )
    planner_prompt_cache_mb: int = Field(
        default=256, ge=1, description="Memory for products' variant-independent prompt analyses, which promo "
        "variants are built from (a bench catalog row ~2 KB; a product at the schema's limits ~37 KB).",
    )

    # --- Prompt engine and safety (inference/prompt) -----------------------------------------------------
    absolute_terms_policy: Literal["drop", "refuse"] = Field(
        default="drop", description="Advertising-law absolute terms (最佳, 第一 …): drop them or refuse the product."
    )

    # --- Model and generation (inference/pipeline) -------------------------------------------------------
    model: str = Field(default=DEFAULT_MODEL, description="Hub id, local folder, or 'tiny' (built-in random model).")
    tiny_model_dir: Path = Path(".cache/tiny-wan2.2")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:N'.")
    resolution: Literal["240p", "480p", "720p"] = "480p"
    aspect: Literal["16:9", "9:16", "1:1"] = "16:9"
    duration_s: float = Field(default=5.0, ge=2.0, le=10.0)
    fps: int = 24
    steps: int = Field(default=50, ge=1, le=100)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=20.0)
    flow_shift: float = Field(default=5.0, gt=0.0)
    lora_path: str | None = Field(default=None, description="Step-distilled LoRA: few steps, no CFG.")
    compile_transformer: bool = Field(default=False, description="torch.compile the transformer (slow first call).")
    attention_backend: str | None = Field(default=None, description="diffusers backend: flash, sage, _native_cudnn …")
    quantize: Literal["none", "fp8", "fp8_weight_only"] = Field(
        default="none", description="torchao FP8 transformer: weights+activations (Hopper/Ada) or weights only."
    )
    step_cache: Literal["none", "first_block"] = Field(
        default="none", description="diffusers First Block Cache: skip the transformer's later blocks on steps "
        "that barely change."
    )
    step_cache_threshold: float = Field(default=0.1, gt=0, le=1, description="First Block Cache residual threshold.")
    vae_tiling: bool = Field(default=False, description="Tiled/sliced VAE decode: less GPU memory, a little slower.")
    offload: Literal["none", "model", "group"] = Field(default="none", description="CPU offload for 24 GB cards.")
    text_encoder_device: Literal["auto", "cpu"] = Field(
        default="auto", description="cpu: keep the 5.7 B text encoder off the GPU (behind the embedding cache)."
    )
    text_cache_entries: int = Field(default=64, ge=1, le=4096, description="Text embeddings kept (~4 MB each).")

    # --- Product image fetching --------------------------------------------------------------------------
    image_allowed_schemes: tuple[str, ...] = ("https", "http", "file")
    image_allowed_hosts: tuple[str, ...] = Field(default=(), description="Empty: any public host.")
    image_file_root: Path = Field(default=Path("."), description="file:// images must lie under this folder.")
    image_max_bytes: int = 10_000_000
    image_max_pixels: int = 40_000_000
    image_timeout_s: float = 10.0
    image_allow_private: bool = Field(default=False, description="Allow private/loopback hosts (tests).")
    image_fit: Literal["pad", "crop"] = Field(default="pad", description="Pad or crop the photo to the frame.")

    # --- Quality gate (inference/quality) ----------------------------------------------------------------
    quality_max_attempts: int = Field(default=3, ge=1, le=10)
    quality_publish_best_below_gate: bool = Field(default=False, description="Publish the best attempt, flagged.")
    clip_model: str | None = Field(
        default="openai/clip-vit-base-patch32", description="Hub id, local folder, 'tiny', or null: no CLIP."
    )
    tiny_clip_dir: Path = Path(".cache/tiny-clip")
    quality_black_luma_max: float = Field(default=16.0, ge=0, le=255, description="Mean luma (0-255) below: black.")
    quality_blown_luma_min: float = Field(default=240.0, ge=0, le=255, description="Mean luma above: blown out.")
    quality_exposure_max_fraction: float = Field(default=0.1, ge=0, le=1, description="Black/blown frames allowed.")
    quality_motion_min: float = Field(default=0.2, ge=0, description="Median frame-to-frame luma change.")
    quality_flicker_max: float = Field(default=6.0, gt=0, description="Brightness spike-and-return (luma levels).")
    quality_tearing_max: float = Field(default=1.5, gt=0, description="One-frame row seam, relative excess.")
    quality_scene_jump_max: float = Field(default=8.0, gt=0, description="Max frame change / (median + 1).")
    quality_clip_text_min: float | None = Field(default=0.2, description="CLIP prompt-frame cosine; None: off.")
    quality_clip_image_min: float | None = Field(default=0.6, description="CLIP photo-frame cosine; None: off.")
    quality_clip_frames: int = Field(default=8, ge=1, le=64, description="Frames sampled for CLIP scoring.")

    # --- Labels, overlays, encoding (inference/labels, inference/encode) ---------------------------------
    label_content_producer: str = "skuvid"
    label_content_propagator: str = "skuvid"
    font_path: Path | None = Field(default=None, description="CJK font; found among system fonts when unset.")
    mark_corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = "top-right"
    x264_preset: str = "veryfast"
    x264_crf: int = Field(default=23, ge=0, le=51)
    mark_height_fraction: float = Field(default=0.06, ge=0.05, le=0.2, description="Mark glyph height / shorter side.")
    mark_opacity: float = Field(default=0.85, gt=0, le=1, description="Alpha of the visible AIGC mark text.")
    x264_maxrate_kbps: int = Field(default=2000, ge=100, description="VBV cap: keeps 5 s 480p under 2 MB.")
    x264_bufsize_kbps: int = Field(default=4000, ge=100, description="VBV buffer (kbit).")
    poster_jpeg_quality: int = Field(default=88, ge=30, le=95)
    feed_crop: bool = Field(default=False, description="Also write a 9:16 centre crop for feeds.")

    # --- Renderer ----------------------------------------------------------------------------------------
    max_in_flight: int = Field(
        default=4, ge=1, le=64,
        description="Records a renderer holds (queued + in its stages) before it pauses its partitions.",
    )
    postprocess_workers: int = Field(
        default=2, ge=1, le=32, description="Threads for quality gate, labels and encoding next to the GPU."
    )

    # --- Storage / CDN -----------------------------------------------------------------------------------
    store: StoreKind = StoreKind.LOCAL
    local_store_dir: Path = Path("out/cdn")
    cdn_base_url: str = Field(default="", description="Public URL prefix; empty: file:// URLs of the local store.")
    s3_bucket: str = "skuvid-videos"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = "videos/"
    s3_access_key_id: str | None = Field(default=None, description="Unset: boto's own credential chain.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="A secret: never logged.")
    s3_client_attempts: int = Field(
        default=3, ge=1, le=10,
        description="Tries the S3 client makes of one call (botocore standard retry mode) before the failure reaches "
                    "the renderer, whose own retries (max_attempts, retry_backoff_s) then govern.",
    )

    # --- Failure handling -------------------------------------------------------------------------------
    max_attempts: int = Field(
        default=5, ge=1, le=50, description="Tries of a request whose failure is transient, before video.failed."
    )
    retry_backoff_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles each time, jittered.")
    retry_backoff_max_s: float = Field(default=60.0, gt=0, description="Upper bound of one retry delay.")
    shutdown_grace_s: float = Field(default=30.0, gt=0, description="SIGTERM ends the process within this time.")
    revoke_grace_s: float = Field(
        default=120.0, ge=0, description="On a rebalance, renders of partitions moving away get this long to "
        "finish and commit before they move (the group waits; below max_poll_interval_ms, the rebalance timeout)."
    )
    kafka_delivery_timeout_ms: int = Field(
        default=20_000, ge=1000, description="A send not acknowledged within this time fails (and is retried)."
    )

    # --- Operations --------------------------------------------------------------------------------------
    metrics_port: int = Field(
        default=0, description="Port of /metrics, /healthz and /readyz; 0 disables it. `serve` (both roles): "
        "the planner on this port, the renderer on the next."
    )
    render_stall_s: float = Field(default=1800.0, gt=0, description="/healthz fails when a render runs longer.")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    gpu_price_cny_per_hour: float = Field(default=8.0, ge=0, description="For the cost of a video (CNY).")

    # --- API ---------------------------------------------------------------------------------------------
    experiments_file: Path = Field(default=Path("deploy/experiments/experiments.json"),
                                   description="Declared A/B experiments (GET /v1/experiments/{id}).")
    experiments_group: str = Field(default="skuvid-experiments", description="The experiment agent's group.")
    api_host: str = Field(default="0.0.0.0", description="Interface the listing API listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port of the listing API (`serve --role api`).")
    render_policy: Literal["eager", "lazy", "auto"] = Field(
        default="auto", description="When the planner sends a planned video to a render lane: at once (eager), on "
        "the listing's first view through the API (lazy), or eager for hot products and promos and lazy for the "
        "long tail (auto).",
    )
    api_max_body_bytes: int = Field(default=16_384, ge=1024, description="Larger request bodies get 413.")
    api_enqueue_interval_s: float = Field(
        default=300.0, ge=0, description="First views enqueue a SKU's held renders at most once per this interval."
    )
    api_variant_experiment: str = Field(
        default="skuvid-variants", min_length=1, max_length=48,
        description="Experiment id prefix of the A/B choice between a SKU's variants (`<prefix>:daily`, "
        "`<prefix>:<promo id>`), bucketed by experiments.assignment.",
    )

    # --- Review and content credentials (review/, inference/c2pa_sign) ------------------------------------
    review_enabled: bool = Field(
        default=False, description="The API role keeps the review queue and serves /review (it then also reads "
        "product.created/product.updated, for the product cards).",
    )
    review_reviewers: SecretStr | None = Field(
        default=None, description="Who may review: `id:token,id:token`; a reviewer sends `Authorization: Bearer "
        "TOKEN` or basic auth `id:TOKEN`. A secret.",
    )
    review_sample_rate: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Share of published videos sampled for review, in every "
        "stratum (category x template) alike.",
    )
    review_min_per_stratum: int = Field(
        default=1, ge=0, description="The first videos (by render time) of every stratum are reviewed whatever "
        "the rate, so rare categories are seen too.",
    )
    review_new_template_first: int = Field(
        default=20, ge=0, description="The first N renders of every template version are reviewed.",
    )
    review_lease_s: float = Field(default=300.0, ge=10.0, description="How long a claimed video stays with its "
                                  "reviewer before it returns to the queue.")
    review_max_rerenders: int = Field(
        default=2, ge=0, le=10, description="Re-renders of one rejected video (new seeds) before its product is "
        "refused.",
    )
    review_rerender_reasons: tuple[str, ...] = Field(
        default=("visual_artefacts", "garbled_text", "other"),
        description="Reject reasons that re-render with a new seed; the others (wrong_product, unsafe, "
        "off_brand) refuse the product until its data changes.",
    )
    c2pa_cert_chain_file: Path | None = Field(
        default=None, description="PEM chain (signing certificate first, then its CA) for the C2PA manifest of "
        "every published MP4; unset: MP4s are not signed.",
    )
    c2pa_private_key_file: Path | None = Field(default=None, description="PEM private key of the signing "
                                               "certificate (PKCS#8).")
    c2pa_signing_alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = Field(
        default="es256", description="Signature algorithm; must match the key.",
    )
    c2pa_tsa_url: str | None = Field(default=None, description="RFC 3161 time-stamp authority; unset: none.")

    @model_validator(mode="after")
    def _revoke_grace_within_the_rebalance_timeout(self) -> Settings:
        if self.revoke_grace_s * 1000 >= self.max_poll_interval_ms:
            raise ValueError(f"revoke_grace_s ({self.revoke_grace_s}) must be below max_poll_interval_ms "
                             f"({self.max_poll_interval_ms} ms): the group would drop this member mid-handover")
        return self

    @model_validator(mode="after")
    def _tiny_model_previews(self) -> Settings:
        """``model=tiny`` switches unset fields to TINY_PREVIEW_DEFAULTS (explicit values always win)."""
        if self.model == TINY_MODEL:
            for name, value in TINY_PREVIEW_DEFAULTS.items():
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, value)
        return self


# What the built-in tiny model implies for every field the user did not set: it emits noise at CPU speed,
# so it renders small, short previews, scores them with the tiny CLIP and publishes them flagged.
TINY_PREVIEW_DEFAULTS: dict[str, object] = {
    "resolution": "240p",
    "duration_s": 2.0,
    "steps": 4,
    "guidance_scale": 1.0,
    "clip_model": TINY_MODEL,
    "quality_clip_text_min": None,
    "quality_clip_image_min": None,
    "quality_max_attempts": 1,
    "quality_publish_best_below_gate": True,
}


def as_env(settings: Settings, fields: Iterable[str] | None = None) -> dict[str, str]:
    """Environment variables that recreate ``settings`` (or the named fields) in a child process."""
    env = {}
    for name in fields if fields is not None else type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            text = "null"
        elif isinstance(value, (tuple, list, dict)):
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
        elif isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"SKUVID_{name.upper()}"] = text
    return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
