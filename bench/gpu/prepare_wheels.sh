#!/usr/bin/env bash
# Run HERE (not on the GPU machine) once per lease: fetch the wheels the GPU machine lacks into .whl/
# (ignored by git, carried with `carry: [".whl"]`). The GPU image already has torch, transformers, accelerate,
# peft, scikit-image, numpy, pillow, safetensors, huggingface-hub; it lacks diffusers, torchao and pydantic.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
want() { grep -i "^$1==" requirements.lock | head -1; }
pkgs=(diffusers torchao pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
      orjson ftfy wcwidth importlib-metadata structlog)
specs=()
for p in "${pkgs[@]}"; do s=$(want "$p"); [ -n "$s" ] && specs+=("$s"); done
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl "${specs[@]}"
ls .whl
