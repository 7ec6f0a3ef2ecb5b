#!/usr/bin/env bash
# Create the project virtualenv (installing python3-venv via apt when the interpreter lacks it).
set -euo pipefail
PYTHON=${1:-python3}; VENV=${2:-.venv}
die() { echo "venv.sh: error: $*" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python >= 3.11"
"$PYTHON" - <<'PY' || die "Python >= 3.11 is required ($("$PYTHON" --version 2>&1))"
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  command -v apt-get >/dev/null || die "python venv support missing and apt-get not available"
  echo "venv.sh: installing python3-venv" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq python3-venv >/dev/null; else sudo apt-get install -y -qq python3-venv >/dev/null; fi
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q -e '.[test]' 2>&1 | grep -v -e '^WARNING: Location' -e '^$' || true
"$VENV/bin/python" -c 'import breakglass, kopf, jwt, helm_python' || die "dependency installation failed"
echo "venv.sh: $VENV ready" >&2
