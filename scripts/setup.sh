#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for xlsearch: Debian packages, then a virtual environment with the
# training, data, dev and distributed (Ray Data, Milvus Lite) extras. Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# chromium + fonts-noto-cjk: the web page's browser tests (tests/web); the screenshot shows Chinese
# docker-compose: renders deploy/compose.yaml in tests/deploy (no Docker engine needed)
APT_PACKAGES=(tuxpaint-stamps-default redis-server prometheus libcairo2 python3-venv build-essential chromium fonts-noto-cjk docker-compose)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel
fi
stamp="$VENV/.xlsearch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ clients/pyproject.toml -nt "$stamp" ]; then
  echo "[setup] pip install -e .[train,dev,distributed] (torch comes from the local wheel cache when present)"
  "$VENV/bin/pip" install -q -e ".[train,dev,distributed]"
  # The light client generates its protobuf code at build time (grpcio-tools comes with the dev extra).
  "$VENV/bin/pip" install -q --no-build-isolation -e ./clients
  touch "$stamp"
fi
echo "[setup] ready: $VENV"
