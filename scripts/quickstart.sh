#!/usr/bin/env bash
# The offline journey of a cluster image, on this machine, with no network but loopback:
#
#   1. start two loopback registries (docker-registry) A and B and seed them with small
#      multi-platform images the project generates (crates/image-store/examples/
#      write_demo_image.rs): A/journey/web:1.0, B/journey/web:1.0 (same path, other
#      content), B/journey/tools:2.1, A/journey/agent:0.3;
#   2. render examples/offline-journey (manifests and a Helm chart naming those images) with
#      the registries' addresses, scan it, and build a cluster image from it: the build pulls
#      every dependency image into the image's registry/ layer;
#   3. save the cluster image to an archive and STOP both registries;
#   4. load the archive into an empty store, serve the images it carries with
#      `sealer registry serve --image` (no configuration, no upstream), and pull every
#      dependency image through it, by tag and by digest: over HTTP by ?ns=HOST:PORT and by
#      the /v2/HOST_PORT/… path prefix (every blob hashed), and with skopeo by path prefix,
#      checking that every digest is the original one.
#
# Everything happens in a temporary directory (or $DEMO_DIR); nothing touches your default
# store (every store is given with --root). Needs skopeo and docker-registry (Debian
# packages): installed with apt-get when missing and running as root, else the script
# stops and names them. Exits non-zero if any step fails or any digest differs.
set -euo pipefail
# A relative $DEMO_DIR is taken from where the script was started.
[[ -z ${DEMO_DIR:-} || $DEMO_DIR == /* ]] || DEMO_DIR=$PWD/$DEMO_DIR
cd "$(dirname "$0")/.."
repo=$PWD

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
step "checking tools: skopeo, docker-registry"
registry_bin=$(command -v docker-registry 2>/dev/null || true)
[[ -z $registry_bin && -x /usr/bin/docker-registry ]] && registry_bin=/usr/bin/docker-registry
missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
[[ -n $registry_bin ]] || missing+=(docker-registry)
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} (the only network this script uses)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" ||
            { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
        registry_bin=$(command -v docker-registry 2>/dev/null || echo /usr/bin/docker-registry)
    else
        die "the offline journey needs the Debian packages: ${missing[*]}
       install them with:  sudo apt-get install ${missing[*]}
       (or run this script as root, which installs them)"
    fi
fi
command -v skopeo >/dev/null 2>&1 || die "skopeo is still not installed"
[[ -x $registry_bin ]] || die "docker-registry is still not installed"
have_curl=false
command -v curl >/dev/null 2>&1 && have_curl=true
echo "skopeo: $(command -v skopeo), docker-registry: $registry_bin"

# ---------------------------------------------------------------------------------------
# The working directory. A $DEMO_DIR of an earlier run is reused (its content replaced);
# any other non-empty directory is refused rather than overwritten.
if [[ -n ${DEMO_DIR:-} ]]; then
    demo=$DEMO_DIR
    mkdir -p "$demo"
    if [[ -n $(ls -A "$demo") && ! -e $demo/.sealer-journey ]]; then
        die "DEMO_DIR=$demo is not empty and not an earlier journey's directory"
    fi
    rm -rf "${demo:?}"/{upstream-a,upstream-b,seed-store,build-store,node-store,context,pulled,pulled-http,original,original-raw,logs,cluster.tar,cluster-inspect.json}
else
    demo=$(mktemp -d -t sealer-journey-XXXXXX)
fi
demo=$(cd "$demo" && pwd)
touch "$demo/.sealer-journey"
mkdir -p "$demo/logs"

step "building sealer (release)"
run cargo build --release --quiet -p sealer-cli
run cargo build --release --quiet -p sealer-image-store --example write_demo_image
bin=$repo/target/release
sealer() { "$bin/sealer" "$@"; }

# Background processes (registries, the serving sealer): stopped on exit, whatever happens.
declare -A pids=()
stop_process() { # NAME: SIGTERM, then SIGKILL after 5 s; bounded
    local name=$1 pid=${pids[$1]:-} i
    [[ -n $pid ]] || return 0
    unset "pids[$name]"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$? name
    for name in "${!pids[@]}"; do stop_process "$name"; done
    if ((status != 0)); then
        printf '\nfailed (exit %d); logs of the background processes in %s/logs:\n' "$status" "$demo" >&2
        for log in "$demo"/logs/*.log; do
            [[ -s $log ]] || continue
            printf -- '--- %s (last lines)\n' "$log" >&2
            # (distribution logs every 404 to a HEAD as an error: left out)
            grep -v 'response completed with error' "$log" | tail -n 10 >&2
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when 127.0.0.1:PORT answers `GET /v2/` with 200 (an OCI distribution registry).
registry_answers() {
    local port=$1
    if $have_curl; then
        [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/v2/") == 200 ]]
    else
        # shellcheck disable=SC2016 # expanded by the inner bash
        timeout 2 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            printf "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n" "$1" >&3
            IFS= read -r line <&3 || exit 1
            [[ $line == HTTP/1.[01]" 200"* ]]' _ "$port" 2>/dev/null
    fi
}

# A loopback port nobody listens on, from a random place in 20000-59999.
free_port() {
    local i port
    for ((i = 0; i < 100; i++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        port_open "$port" || { echo "$port"; return 0; }
    done
    die "no free loopback port found"
}

# start_server NAME TIMEOUT_SECONDS COMMAND… : runs COMMAND (with @PORT@ replaced by a free
# port) in the background, logging to logs/NAME.log, and waits until it answers /v2/ on that
# port. Sets `port`. Tries up to 5 ports (another process may take one first).
start_server() {
    local name=$1 timeout=$2 attempt i pid log=$demo/logs/$1.log
    shift 2
    for ((attempt = 0; attempt < 5; attempt++)); do
        port=$(free_port)
        local args=("${@//@PORT@/$port}")
        printf '$ %s &\n' "${args[*]}"
        "${args[@]}" >>"$log" 2>&1 &
        pid=$!
        pids[$name]=$pid
        for ((i = 0; i < timeout * 10; i++)); do
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid" 2>/dev/null || true
                unset "pids[$name]"
                if grep -q 'address already in use' "$log"; then
                    echo "port $port was taken; trying another one"
                    continue 2
                fi
                tail -n 20 "$log" >&2
                die "$name exited during its start (log: $log)"
            fi
            if registry_answers "$port"; then
                echo "$name answers on 127.0.0.1:$port (pid $pid)"
                return 0
            fi
            sleep 0.1
        done
        die "$name did not answer http://127.0.0.1:$port/v2/ within ${timeout}s (log: $log)"
    done
    die "$name: no free port after 5 attempts"
}

start_upstream() { # NAME: a docker-registry with its storage in $demo/NAME
    local name=$1
    mkdir -p "$demo/$name/storage"
    cat >"$demo/$name/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $demo/$name/storage
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:5000 # replaced, see below
  secret: sealer-offline-journey
YAML
    # The address in the configuration is replaced by the environment's (distribution reads
    # REGISTRY_<SECTION>_<KEY> overrides).
    start_server "$name" 20 env REGISTRY_HTTP_ADDR=127.0.0.1:@PORT@ \
        "$registry_bin" serve "$demo/$name/config.yml"
}

# ---------------------------------------------------------------------------------------
step "working in $demo"

step "starting two loopback registries, upstream A and upstream B"
start_upstream upstream-a
a=127.0.0.1:$port
start_upstream upstream-b
b=127.0.0.1:$port

# Four different generated images (one seed each), for linux/amd64 and linux/arm64 (and this
# machine's platform); A's and B's journey/web have the same path and other content.
images=("$a/journey/web:1.0" "$b/journey/web:1.0" "$b/journey/tools:2.1" "$a/journey/agent:0.3")
seeds=(101 102 103 104)
case $(uname -m) in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac
host_platform=linux/$arch
platforms=linux/amd64,linux/arm64
[[ $arch == amd64 || $arch == arm64 ]] || platforms=$platforms,$host_platform
declare -A original=() original_platform=()
seed_store=$demo/seed-store

step "seeding them with generated images (pushed with sealer push)"
for i in "${!images[@]}"; do
    run "$bin/examples/write_demo_image" "$seed_store" "${images[$i]}" --seed "${seeds[$i]}" --platform "$platforms"
    run sealer --root "$seed_store" push --quiet "${images[$i]}"
done

step "the original digests, as the upstreams serve them"
mkdir -p "$demo/original-raw"
for image in "${images[@]}"; do
    file=$demo/original-raw/$(tr '/:' '__' <<<"$image").json
    skopeo inspect --raw --tls-verify=false "docker://$image" >"$file"
    original[$image]=sha256:$(sha256sum <"$file" | cut -d' ' -f1)
    # This machine's platform of it, as skopeo copies it without --all (checked at the end).
    skopeo copy --quiet --src-tls-verify=false "docker://$image" "oci:$demo/original:$image" >/dev/null
    original_platform[$image]=sha256:$(skopeo inspect --raw "oci:$demo/original:$image" | sha256sum | cut -d' ' -f1)
    grep -q "${original_platform[$image]}" "$file" ||
        die "$image: the copied manifest ${original_platform[$image]} is not one of its index's"
    printf '%-40s %s\n' "$image" "${original[$image]}"
done

# ---------------------------------------------------------------------------------------
context=$demo/context
step "rendering examples/offline-journey with the registries' addresses into $context"
run cp -R examples/offline-journey "$context"
grep -rlE 'upstream-[ab]\.invalid' "$context" | while IFS= read -r file; do
    sed -i -e "s/upstream-a\.invalid/$a/g" -e "s/upstream-b\.invalid/$b/g" "$file"
done
if grep -rn 'upstream-[ab]\.invalid' "$context"; then die "the context still names upstream-a/b.invalid"; fi

step "the images the cluster needs (sealer scan)"
run sealer scan "$context"

cluster=localhost/journey/cluster:v1
build_store=$demo/build-store
step "building the cluster image: every dependency image goes into its registry/ layer"
run sealer --root "$build_store" build -t "$cluster" "$context"

step "the images it carries (annotation sealer.image.container.images)"
printf '$ sealer --root %s inspect %s\n' "$build_store" "$cluster"
sealer --root "$build_store" inspect "$cluster" >"$demo/cluster-inspect.json"
carried=$(grep '"sealer.image.container.images"' "$demo/cluster-inspect.json" || true)
[[ -n $carried ]] || die "the cluster image has no sealer.image.container.images annotation"
# shellcheck disable=SC1003 # one backslash
tr -d '\\' <<<"$carried" | grep -oE '\{"image":[^}]*\}' |
    sed -E 's/.*"image":"([^"]+)","appName":"([^"]*)","platform":"([^"]+)".*/    \1  \3  \2/'
for image in "${images[@]}"; do
    grep -q "$image" <<<"$carried" || die "the cluster image does not list $image"
done

step "saving it to an archive"
run sealer --root "$build_store" save -o "$demo/cluster.tar" "$cluster"
ls -l "$demo/cluster.tar"

step "stopping both upstream registries: from here on, nothing but the archive"
stop_process upstream-a
stop_process upstream-b
for upstream in "$a" "$b"; do
    if port_open "${upstream#*:}"; then die "$upstream still accepts connections"; fi
    echo "$upstream: down"
done

# ---------------------------------------------------------------------------------------
node_store=$demo/node-store
step "loading the archive into an empty store (a machine with no network)"
run sealer --root "$node_store" load -i "$demo/cluster.tar"
run sealer --root "$node_store" images

# A GET to the serving registry: PATH_AND_QUERY OUT_FILE [ACCEPT]; fails unless 200.
manifest_types='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json'
http_get() {
    local path=$1 out=$2 accept=${3:-*/*}
    if $have_curl; then
        local code
        code=$(curl -s -m 60 -H "Accept: $accept" -o "$out" -w '%{http_code}' "http://$serve$path") || code="failed ($?)"
        [[ $code == 200 ]] || { echo "HTTP $code: GET http://$serve$path" >&2; return 1; }
    else
        # bash's /dev/tcp, HTTP/1.0: the server closes the connection after the body.
        # shellcheck disable=SC2016 # expanded by the inner bash
        timeout 60 bash -c '
            exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
            printf "GET %s HTTP/1.0\r\nHost: %s\r\nAccept: %s\r\n\r\n" "$2" "$1" "$3" >&3
            IFS= read -r status <&3 || exit 1
            while IFS= read -r line <&3 && [[ $line != $'\''\r'\'' && -n $line ]]; do :; done
            cat <&3 >"$4"
            [[ $status == HTTP/1.[01]" 200"* ]] || { echo "${status%$'\''\r'\''}: GET http://$1$2" >&2; exit 1; }' _ "$serve" "$path" "$accept" "$out"
    fi
}
sha_of() { printf 'sha256:%s' "$(sha256sum <"$1" | cut -d' ' -f1)"; }
failures=0
check() { # WHAT EXPECTED GOT
    if [[ $2 == "$3" ]]; then
        printf '    %-58s ok %s\n' "$1" "$3"
    else
        printf '    %-58s DIFFERS: expected %s, got %s\n' "$1" "$2" "$3" >&2
        failures=$((failures + 1))
    fi
}

# Pulls IMAGE from the serving registry over HTTP the way a runtime does, by ROUTE
# (`prefix`: /v2/HOST_PORT/REPOSITORY/…, `ns`: /v2/REPOSITORY/…?ns=HOST:PORT): the index by
# tag and by digest, this machine's platform manifest, and its config and layers, each hashed.
pull_http() {
    local image=$1 route=$2 host=${1%%/*} repository=${1#*/} base query file digest blobs=0
    repository=${repository%:*}
    local tag=${image##*:}
    if [[ $route == prefix ]]; then base=/v2/${host//:/_}/$repository query=; else base=/v2/$repository query="?ns=$host"; fi
    file=$demo/pulled-http/manifest.json
    printf '$ GET %s/manifests/%s%s\n' "$base" "$tag" "$query"
    http_get "$base/manifests/$tag$query" "$file" "$manifest_types" || die "GET $base/manifests/$tag$query failed"
    check "index by tag ($route)" "${original[$image]}" "$(sha_of "$file")"
    [[ $route == prefix ]] && served[$image]=$(sha_of "$file")
    http_get "$base/manifests/${original[$image]}$query" "$file" "$manifest_types" ||
        die "GET $base/manifests/${original[$image]}$query failed"
    check "index by digest ($route)" "${original[$image]}" "$(sha_of "$file")"
    digest=${original_platform[$image]}
    http_get "$base/manifests/$digest$query" "$file" "$manifest_types" || die "GET $base/manifests/$digest$query failed"
    check "$host_platform manifest by digest ($route)" "$digest" "$(sha_of "$file")"
    # shellcheck disable=SC2013 # one digest per word
    for digest in $(grep -oE 'sha256:[0-9a-f]{64}' "$file" | sort -u); do
        http_get "$base/blobs/$digest$query" "$demo/pulled-http/blob" || die "GET $base/blobs/$digest$query failed"
        [[ $(sha_of "$demo/pulled-http/blob") == "$digest" ]] || { check "blob $digest" "$digest" "$(sha_of "$demo/pulled-http/blob")"; continue; }
        blobs=$((blobs + 1))
    done
    printf '    %-58s ok\n' "config and $((blobs - 1)) layer(s) by digest ($route), hashes match"
}

step "serving the images the cluster image carries: no configuration, no upstreams"
start_server serve 120 "$bin/sealer" --root "$node_store" registry serve --image "$cluster" --listen 127.0.0.1:@PORT@
serve=127.0.0.1:$port

# A registry host with a port is written HOST_PORT as a path prefix: image references allow
# no `:` in their path (127.0.0.1:5000/127.0.0.1:6000/x is not a reference; .../127.0.0.1_6000/x is).
step "pulling every dependency image through it over HTTP: ?ns=HOST:PORT (containerd) and /v2/HOST_PORT/… prefixes"
declare -A served=() served_platform=()
mkdir -p "$demo/pulled-http"
for image in "${images[@]}"; do
    echo "$image"
    pull_http "$image" prefix
    pull_http "$image" ns
done

step "pulling every dependency image through it with skopeo (path prefix), by tag and by digest"
for image in "${images[@]}"; do
    host=${image%%/*}
    prefixed=${host//:/_}/${image#*/}
    label=$(basename "${image%:*}")-$([[ $host == "$a" ]] && echo a || echo b)
    printf '$ skopeo inspect --raw --tls-verify=false docker://%s/%s | sha256sum\n' "$serve" "$prefixed"
    skopeo inspect --raw --tls-verify=false "docker://$serve/$prefixed" >"$demo/pulled-http/skopeo.json"
    check "index by tag (skopeo)" "${original[$image]}" "$(sha_of "$demo/pulled-http/skopeo.json")"
    run skopeo copy --quiet --src-tls-verify=false \
        "docker://$serve/${prefixed%:*}@${original[$image]}" "oci:$demo/pulled:$label"
    served_platform[$image]=sha256:$(skopeo inspect --raw "oci:$demo/pulled:$label" | sha256sum | cut -d' ' -f1)
    check "$host_platform image copied by digest (skopeo)" "${original_platform[$image]}" "${served_platform[$image]}"
done
stop_process serve
echo "the store now holds them under their source names:"
run sealer --root "$node_store" images

step "what the cluster's nodes need to pull through it: one containerd hosts.toml per registry"
run sealer --root "$node_store" registry mirror-config --runtime containerd \
    --endpoint "http://$serve" --image "$cluster"

step "summary"
row='%-36s %-20s %-20s %-20s %s\n'
short() { printf '%s' "${1:0:19}"; }
# shellcheck disable=SC2059
printf "$row" IMAGE ORIGINAL "SERVED (BY TAG)" "$host_platform COPY" OK
for image in "${images[@]}"; do
    ok=yes
    if [[ ${served[$image]:-} != "${original[$image]}" || ${served_platform[$image]:-} != "${original_platform[$image]}" ]]; then
        ok=NO
        failures=$((failures + 1))
    fi
    # shellcheck disable=SC2059
    printf "$row" "$image" "$(short "${original[$image]}")" "$(short "${served[$image]:-none}")" \
        "$(short "${served_platform[$image]:-none}")" "$ok"
done
((failures == 0)) || die "$failures check(s) failed: served digests differ from the originals"

step "done: every dependency image came back offline with its original digest; files in $demo"
