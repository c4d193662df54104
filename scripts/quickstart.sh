#!/usr/bin/env bash
# An offline tour of sealer's image store: build the CLI, write a small two-platform demo
# image, list and inspect it, save it to an oci-archive that skopeo reads, load it into a
# second store, check both stores, and prune.
#
# Everything happens in a temporary directory (or $DEMO_DIR), nothing touches your default
# store. skopeo steps are skipped when skopeo is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "building sealer (release)"
cargo build --release --quiet -p sealer-cli
cargo build --release --quiet -p sealer-image-store --example write_demo_image
bin=$PWD/target/release

demo=${DEMO_DIR:-$(mktemp -d -t sealer-quickstart-XXXXXX)}
mkdir -p "$demo"
store=$demo/store
second=$demo/second-store
image=localhost/sealer/demo:v1
sealer() { "$bin/sealer" "$@"; }
have_skopeo=false
command -v skopeo >/dev/null 2>&1 && have_skopeo=true

step "writing a demo image (linux/amd64 + linux/arm64) into $store"
run "$bin/examples/write_demo_image" "$store" "$image"

step "listing and inspecting it"
run sealer --root "$store" images
run sealer --root "$store" inspect "$image" --platform linux/arm64 | head -n 24
echo "..."

step "the store is an OCI image layout: skopeo reads it in place"
if $have_skopeo; then
    run skopeo inspect --raw "oci:$store:$image"
    echo
else
    echo "(skopeo not installed: skipped)"
fi

step "saving it to an oci-archive"
run sealer --root "$store" save -o "$demo/demo.tar" "$image"
digest=$(sealer --root "$store" images --json --digests | sed -n 's/.*"digest": "\(sha256:[0-9a-f]*\)".*/\1/p' | head -n 1)
if $have_skopeo; then
    step "skopeo reads the archive with the same digest"
    run skopeo inspect "oci-archive:$demo/demo.tar:$image" | head -n 3
    raw=sha256:$(skopeo inspect --raw "oci-archive:$demo/demo.tar:$image" | sha256sum | cut -d' ' -f1)
    echo "store digest:            $digest"
    echo "sha256 of skopeo's --raw: $raw"
    [[ $raw == "$digest" ]] || { echo "digests differ" >&2; exit 1; }
fi

step "loading the archive into an empty store"
run sealer --root "$second" load -i "$demo/demo.tar"
run sealer --root "$second" tag "$image" localhost/sealer/demo:latest
run sealer --root "$second" images
run sealer --root "$second" fsck

step "a docker-archive for linux/arm64 too"
run sealer --root "$store" save --format docker-archive --platform linux/arm64 -o "$demo/demo-arm64.docker.tar" "$image"

step "removing the image and pruning its content"
run sealer --root "$second" rmi "$image" localhost/sealer/demo:latest
run sealer --root "$second" prune
run sealer --root "$second" images

step "done: the stores and archives are in $demo"
