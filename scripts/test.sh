#!/usr/bin/env bash
# Runs every test of the workspace.
#
# The end-to-end tests drive real skopeo, umoci, docker-registry, openssl and containerd, and the
# object-storage tests moto's S3 server. Missing tools are installed with apt-get when running
# as root, moto_server into a virtual environment by scripts/install-moto.sh; otherwise the
# tests that need them print "SKIPPED: <tool> not installed" (and fail under CI=true).
# Arguments replace `--workspace`, e.g. `./scripts/test.sh -p sealer-cli --test e2e -- crash`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in skopeo umoci docker-registry openssl containerd; do
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

./scripts/install-moto.sh || echo "note: moto_server not installed (needs python3 with venv)" >&2

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
if (($# > 0)); then cargo test "$@"; else cargo test --workspace --no-fail-fast; fi 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One closing line for the whole workspace (cargo prints one per test binary).
skipped=$(grep -c '^SKIPPED: ' "$log" || true)
awk -v skipped="$skipped" '
    /^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed;?$/) passed += $(i - 1)
            if ($i ~ /^failed;?$/) failed += $(i - 1)
        }
    }
    END { printf "%d passed, %d failed, %d skipped\n", passed - skipped, failed, skipped }
' "$log"
exit "$status"
