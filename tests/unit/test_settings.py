from pathlib import Path

import pytest

from skuvid.settings import TINY_PREVIEW_DEFAULTS, Settings, as_env


def test_as_env_recreates_the_settings(monkeypatch):
    original = Settings(model="org/model", quality_clip_text_min=None, image_allowed_hosts=("cdn.example",),
                        local_store_dir=Path("/tmp/x"), kafka_idempotent=False)
    for key, value in as_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_tiny_model_implies_preview_defaults_but_explicit_values_win(monkeypatch):
    monkeypatch.setenv("SKUVID_MODEL", "tiny")
    monkeypatch.setenv("SKUVID_STEPS", "9")
    settings = Settings()
    assert settings.steps == 9
    for name, value in TINY_PREVIEW_DEFAULTS.items():
        if name != "steps":
            assert getattr(settings, name) == value, name


def test_real_model_keeps_production_defaults():
    settings = Settings(model="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    assert (settings.resolution, settings.steps, settings.quality_publish_best_below_gate) == ("480p", 50, False)
    assert settings.clip_model and settings.clip_model != "tiny"


def test_invalid_value_is_refused(monkeypatch):
    monkeypatch.setenv("SKUVID_DURATION_S", "11")
    with pytest.raises(ValueError, match="duration_s"):
        Settings()


def test_revoke_grace_must_end_before_the_group_drops_the_member():
    assert Settings(revoke_grace_s=60, max_poll_interval_ms=600_000).revoke_grace_s == 60
    with pytest.raises(ValueError, match="revoke_grace_s"):
        Settings(revoke_grace_s=600, max_poll_interval_ms=600_000)
