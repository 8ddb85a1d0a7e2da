#!/usr/bin/env bash
# Set up (first run only) and start the app at http://127.0.0.1:7860; extra arguments go to app.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
