# Each target does its own set-up from a fresh clone: virtualenv (pinned by requirements.lock), the CJK font.
PY := .venv/bin/python
UV := .venv/bin/uv
STAMP := .venv/.installed

.PHONY: demo test test-fast lock schemas bench setup system clean

demo: setup
	$(PY) -m skuvid.cli demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not kafka and not slow"

setup: $(STAMP) system

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check "uv==0.13.9"
	$(UV) pip sync -q --compile-bytecode --python $(PY) requirements.lock  # .pyc at install: every process starts faster
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

# The visible "AI生成" mark needs a real CJK font; Debian's WenQuanYi Micro Hei (1.6 MB).
# The experiment report's HTML is checked in a real headless browser: Debian's chromium.
system:
	@test -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; }
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lock:
	$(UV) pip compile -q pyproject.toml --extra test --python-version 3.11 -o requirements.lock

schemas: setup
	$(PY) -m schemas.export

bench: setup
	$(PY) -m skuvid.cli bench prompts --json
	$(PY) -m skuvid.cli bench postprocess --json
	$(PY) -m skuvid.cli bench inference --json
	$(PY) -m skuvid.cli bench planner --json

clean:
	rm -rf .venv .cache out

# Reliability suite (tests/reliability): real Kafka, an S3 API server that goes down, service processes with
# a fake model; crash, broker, storage, poison, hostile, load and startup scenarios -> out/reliability.json.
# About 25 minutes on a 2-core VM; `make test` runs the same scenarios at quick sizes.
.PHONY: reliability
reliability: setup
	$(PY) -m tests.reliability --full --out out/reliability.json
