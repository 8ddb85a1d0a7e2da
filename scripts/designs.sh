#!/usr/bin/env bash
# Install the emoji designs the v2 scenes draw (attnviz/designs.py): npm packages of Iconify JSON at pinned
# versions, each checked by its sha256, and the glyphs the scenes use extracted into one small JSON file per
# design in the designs folder (first argument, else $ATTNVIZ_DESIGNS, else ~/.cache/attnviz/designs).
# Needs npm (run as root with apt-get, it installs Debian's npm itself) and the venv of scripts/setup.sh
# (PYTHON=... for another interpreter). Idempotent: does nothing when every design is already installed.
# The rasteriser, resvg-py, is a pinned requirement in requirements.txt.
#
#   bash scripts/designs.sh                      # into ~/.cache/attnviz/designs
#   bash scripts/designs.sh /opt/attnviz/designs # e.g. in an image; then run it with ATTNVIZ_DESIGNS set
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
if [ $# -ge 1 ]; then
  export ATTNVIZ_DESIGNS="$1"
fi
if "$python" -m attnviz.designs check >/dev/null 2>&1; then
  exit 0
fi
if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/apt_install.sh npm || true
fi
if ! command -v npm >/dev/null; then
  echo "error: scripts/designs.sh needs npm to fetch the emoji designs (apt-get install npm)" >&2
  exit 1
fi
npm_dir=$(mktemp -d)
trap 'rm -rf "$npm_dir"' EXIT
# shellcheck disable=SC2046  # one word per package@version
npm install --prefix "$npm_dir" --no-save --no-package-lock --ignore-scripts --no-audit --no-fund \
  --loglevel=error $("$python" -m attnviz.designs packages) >/dev/null
"$python" -m attnviz.designs extract --npm "$npm_dir"
