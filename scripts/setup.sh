#!/usr/bin/env bash
# Create .venv and install attnviz with its requirements (dev=1: also the test tools).
# Idempotent: does nothing when the requirement files have not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=${1:-0}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
files="requirements.txt pyproject.toml"
[ "$dev" = 1 ] && files="$files requirements-dev.txt requirements-nodeps.txt"
stamp=".venv/.attnviz-installed-$(cat $files | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # torch first, pinned, so that nothing below pulls in a newer (multi-GB) build.
  .venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  req=requirements.txt
  [ "$dev" = 1 ] && req=requirements-dev.txt
  .venv/bin/pip install --quiet --disable-pip-version-check -r "$req" -e .
  if [ "$dev" = 1 ]; then
    # Test tools whose declared dependencies clash with ours (see the file): their real ones are in $req.
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  fi
  touch "$stamp"
fi
