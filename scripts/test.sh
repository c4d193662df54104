#!/usr/bin/env bash
# Runs every test of the workspace.
#
# The end-to-end tests drive real skopeo and umoci (and later docker-registry). Missing
# tools are installed with apt-get when running as root; otherwise the tests that need them
# print "SKIPPED: <tool> not installed" (and fail under CI=true).
# Extra arguments go to `cargo test`, e.g. `./scripts/test.sh -p sealer-cli -- crash`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in skopeo umoci docker-registry; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    else
        echo "note: ${missing[*]} not installed (run as root to install them)" >&2
    fi
fi

cargo test --workspace "$@"
