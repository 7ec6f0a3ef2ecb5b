#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
# The incident-gated part of the story runs a real Alertmanager (Debian's, cached; no-op when present).
hack/monitoring.sh install
exec .venv/bin/python hack/demo.py "$@"
