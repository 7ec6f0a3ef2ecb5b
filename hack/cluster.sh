#!/usr/bin/env bash
# Local Kubernetes control plane from real parts: Debian etcd + kube-apiserver,
# kube-controller-manager and kubectl built from Debian bookworm's kubernetes source.
#
#   hack/cluster.sh install           apt packages (etcd-server, golang-go, Go sources)
#   hack/cluster.sh build             build binaries into the cache (no-op when cached)
#   hack/cluster.sh start DIR [-- extra apiserver flags...]
#   hack/cluster.sh check DIR
#   hack/cluster.sh stop DIR
#
# Everything binds to 127.0.0.1; ports are picked free at start. DIR receives
# kubeconfig, tokens, certs, logs and pids (env file DIR/cluster.env).
set -euo pipefail

K8S_VERSION="1.20.2"
DEB_VERSION="1.20.5+really1.20.2"
CACHE="${BREAKGLASS_CACHE:-$HOME/.cache/breakglass}/k8s-${K8S_VERSION}"
BIN="$CACHE/bin"
APT_SRC_FILE=/etc/apt/sources.list.d/breakglass-deb-src.sources

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

cmd_install() {
  command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian bookworm machine (install etcd-server and golang-go yourself otherwise)"
  local need=()
  command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need+=(etcd-server)
  if [ ! -x "$BIN/kube-apiserver" ]; then
    command -v go >/dev/null || need+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
    [ -d /usr/share/gocode/src/github.com/json-iterator/go ] || need+=(golang-github-json-iterator-go-dev)
    command -v dpkg-source >/dev/null || need+=(dpkg-dev)
  fi
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing apt packages: ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || die "apt-get install ${need[*]} failed"
  fi
  # etcd-server's package starts a system etcd on 2379; we run our own on free ports.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    as_root systemctl stop etcd || true
  fi
  pkill -x etcd -u root -f '^/usr/bin/etcd$' 2>/dev/null || true
}

ensure_deb_src() {
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding a deb-src entry for bookworm main"
    local uri
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    as_root tee "$APT_SRC_FILE" >/dev/null <<SRC
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    as_root apt-get update -qq || die "apt-get update (deb-src) failed"
  fi
}

cmd_build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/kubectl" ]; then
    return 0
  fi
  cmd_install
  ensure_deb_src
  mkdir -p "$CACHE"
  local blog="$CACHE/build.log"
  log "building kubernetes $K8S_VERSION from Debian source (about 5 min cold); log: $blog"
  # Not `( ... ) || die`: errexit is ignored inside a subshell that is part of an || list.
  set +e
  (
    set -euo pipefail
    local work="$CACHE/work"
    rm -rf "$work"; mkdir -p "$work/src-dl"
    cd "$work/src-dl"
    apt-get source --download-only "kubernetes=$DEB_VERSION" || apt-get source --download-only kubernetes
    local orig; orig=$(ls kubernetes_*.orig.tar.* | sed -n 1p)
    mkdir -p "$work/gopath/src/k8s.io"
    tar -xf "$orig" -C "$work/gopath/src/k8s.io"
    local top; top=$(tar -tf "$orig" | sed -n '1s#/.*##p')  # sed reads it all: no SIGPIPE under pipefail
    mv "$work/gopath/src/k8s.io/$top" "$work/gopath/src/k8s.io/kubernetes"
    local tree="$work/gopath/src/k8s.io/kubernetes"
    cd "$tree"
    # Go >= 1.18 crashes the vendored reflect2 1.0.1 / json-iterator (SIGSEGV in mapiterinit).
    rm -rf vendor/github.com/modern-go/reflect2 vendor/github.com/json-iterator/go
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/json-iterator/go vendor/github.com/json-iterator/go
    export GOPATH="$work/gopath" GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOCACHE="$CACHE/gocache"
    go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    local dirs
    # vendor/k8s.io/<staging> entries are symlinks into staging/: -R follows them.
    dirs=$( { grep -rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin || true; \
              grep -Rl --include='*.go' '+k8s:openapi-gen=' vendor 2>/dev/null || true; } \
            | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
            | xargs -n1 dirname | sort -u | sed -e 's#^#k8s.io/kubernetes/#' | paste -sd, -)
    echo "openapi-gen over $(echo "$dirs" | tr ',' '\n' | wc -l) packages"
    "$work/openapi-gen" --input-dirs "$dirs" \
      --output-package k8s.io/kubernetes/pkg/generated/openapi \
      --output-file-base zz_generated.openapi \
      --go-header-file vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      --output-base "$work/gopath/src" \
      --report-filename /dev/null
    local ld=""
    for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
    done
    mkdir -p "$BIN.tmp"
    for c in kube-apiserver kube-controller-manager kubectl; do
      go build -ldflags "-s -w $ld" -o "$BIN.tmp/$c" "./cmd/$c"
    done
    rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
    cd /; rm -rf "$work"
  ) >"$blog" 2>&1
  local rc=$?
  set -e
  if [ $rc -ne 0 ] || [ ! -x "$BIN/kube-apiserver" ]; then
    die "kubernetes build failed; see $blog (last lines: $(tail -3 "$blog" | tr '\n' ' '))"
  fi
  log "built: $("$BIN/kube-apiserver" --version)"
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

port_in_use() { python3 -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('127.0.0.1',int(sys.argv[1])))==0 else 1)" "$1"; }

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local deadline=$(( $(date +%s) + $1 )); local what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

cmd_start() {
  local dir=${1:?usage: cluster.sh start DIR [-- apiserver flags]}; shift
  [ "${1:-}" = "--" ] && shift
  local extra=("$@")
  cmd_build
  local etcd_bin; etcd_bin=$(command -v etcd || echo /usr/bin/etcd)
  [ -x "$etcd_bin" ] || die "etcd not found (apt-get install etcd-server)"
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/certs" "$dir/logs"
  local etcd_port=${ETCD_PORT:-$(free_port)} etcd_peer=$(free_port)
  local api_port=${APISERVER_PORT:-$(free_port)}
  for p in "$etcd_port" "$api_port"; do
    port_in_use "$p" && die "port $p on 127.0.0.1 is already in use (choose another or unset ETCD_PORT/APISERVER_PORT)"
  done
  # Service-account signing key.
  [ -f "$dir/certs/sa.key" ] || openssl genrsa -out "$dir/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/certs/sa.key" -pubout -out "$dir/certs/sa.pub" 2>/dev/null
  # Static test identities: token,user,uid,"groups".
  cat >"$dir/tokens.csv" <<TOK
admin-token,admin,uid-admin,"system:masters"
alice-token,alice,uid-alice,"sre"
dave-token,dave,uid-dave,"sre"
bob-token,bob,uid-bob,"sre-leads"
carol-token,carol,uid-carol,"sre-leads"
mallory-token,mallory,uid-mallory,"contractors"
controller-manager-token,system:kube-controller-manager,uid-kcm,"system:masters"
TOK
  # The controller manager runs with one identity (no per-controller service accounts); the
  # aggregation controller must update built-in ClusterRoles, which needs system:masters here.
  "$etcd_bin" --name bg --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "bg=http://127.0.0.1:$etcd_peer" --quota-backend-bytes 4294967296 \
    --unsafe-no-fsync \
    >"$dir/logs/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_for 30 etcd curl -fsS "http://127.0.0.1:$etcd_port/health" \
    || { cmd_stop "$dir"; die "etcd did not become healthy; see $dir/logs/etcd.log"; }
  "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --secure-port "$api_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-key-file "$dir/certs/sa.pub" \
    --service-account-signing-key-file "$dir/certs/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount \
    --allow-privileged=false --profiling=false \
    "${extra[@]}" \
    >"$dir/logs/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
  local server="https://127.0.0.1:$api_port"
  wait_for 60 apiserver curl -fsSk "$server/readyz" -H "Authorization: Bearer admin-token" \
    || { cmd_stop "$dir"; die "kube-apiserver did not become ready; see $dir/logs/kube-apiserver.log"; }
  # The self-signed serving cert is in cert-dir; use it as the CA for clients.
  cp "$dir/certs/apiserver.crt" "$dir/ca.crt"
  write_kubeconfig "$dir/kubeconfig" "$server" "$dir/ca.crt" admin admin-token
  for u in alice dave bob carol mallory; do
    write_kubeconfig "$dir/kubeconfig-$u" "$server" "$dir/ca.crt" "$u" "$u-token"
  done
  write_kubeconfig "$dir/kubeconfig-kcm" "$server" "$dir/ca.crt" kcm controller-manager-token
  "$BIN/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig-kcm" \
    --authentication-skip-lookup --authorization-always-allow-paths=/healthz \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 \
    --controllers=garbagecollector,namespace,serviceaccount-token,serviceaccount,clusterrole-aggregation \
    --service-account-private-key-file "$dir/certs/sa.key" \
    --root-ca-file "$dir/ca.crt" \
    --use-service-account-credentials=false --leader-elect=false \
    >"$dir/logs/kube-controller-manager.log" 2>&1 &
  echo $! >"$dir/kube-controller-manager.pid"
  cat >"$dir/cluster.env" <<ENV
KUBECONFIG=$dir/kubeconfig
BREAKGLASS_CLUSTER_SERVER=$server
BREAKGLASS_CLUSTER_CA=$dir/ca.crt
ETCD_PORT=$etcd_port
APISERVER_PORT=$api_port
KUBECTL=$BIN/kubectl
ENV
  # The default namespace and built-in roles appear shortly after start.
  wait_for 60 default-namespace "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get namespace default \
    || { cmd_stop "$dir"; die "default namespace never appeared; see $dir/logs"; }
  wait_for 60 aggregated-roles sh -c "'$BIN/kubectl' --kubeconfig '$dir/kubeconfig' get clusterrole edit -o jsonpath='{.rules}' | grep -q pods" \
    || { cmd_stop "$dir"; die "clusterrole aggregation did not run; see $dir/logs/kube-controller-manager.log"; }
  log "control plane ready at $server (state in $dir)"
}

write_kubeconfig() { # file server ca user token
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $2
    certificate-authority: $3
users:
- name: $4
  user:
    token: $5
contexts:
- name: $4@local
  context: {cluster: local, user: $4}
current-context: $4@local
KC
}

cmd_check() {
  local dir=${1:?usage: cluster.sh check DIR}
  [ -f "$dir/cluster.env" ] || die "no cluster state in $dir"
  "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null && log "ok"
}

cmd_stop() {
  local dir=${1:?usage: cluster.sh stop DIR}
  for c in kube-controller-manager kube-apiserver etcd; do
    if [ -f "$dir/$c.pid" ]; then
      local pid; pid=$(cat "$dir/$c.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$c.pid"
    fi
  done
}

case "${1:-}" in
  install) cmd_install ;;
  build) cmd_build ;;
  start) shift; cmd_start "$@" ;;
  check) shift; cmd_check "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  bin) echo "$BIN" ;;
  *) echo "usage: $0 install|build|start DIR [-- flags]|check DIR|stop DIR|bin" >&2; exit 2 ;;
esac
