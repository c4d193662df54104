#!/usr/bin/env bash
# Installs moto's S3 server (`moto_server`), the real S3-compatible server that the bucket
# tests run against, into a virtual environment: `.venv-moto` at the repository root, or
# $MOTO_VENV. Does nothing when `moto_server` is already there; prints only on errors or when
# it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION=5.2.5
venv=${MOTO_VENV:-$PWD/.venv-moto}

if [[ -x "$venv/bin/moto_server" ]]; then
    exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
    echo "install-moto: python3 is required to install moto_server" >&2
    exit 1
fi
echo "installing moto[server]==$MOTO_VERSION into $venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION"
test -x "$venv/bin/moto_server"
