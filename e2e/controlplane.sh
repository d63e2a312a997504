#!/usr/bin/env bash
# e2e/controlplane.sh up|down|env [DIR]
#
# A real Kubernetes control plane on loopback for tests: etcd 3.6 and kube-apiserver, built by
# e2e/tools.sh (cached by version), on free ports, with certificates made here by openssl.
#   up    starts both in DIR (which must be absent, empty, or a control plane's directory),
#         waits for /readyz, and prints the admin kubeconfig's path. Already up: prints it again.
#   down  stops both and removes DIR. Idempotent.
#   env   prints KUBECONFIG=<path> for a control plane that is up.
# DIR defaults to $WEFT_CP_DIR. The API server authorizes by RBAC; the kubeconfig's user is
# `admin` (group system:masters) by a bearer token, and it trusts the generated CA. No
# controller-manager runs, so the ServiceAccount admission plugin is off (as in envtest):
# Pods are accepted without a service account. The serving certificate also names 10.0.2.2 and
# 10.99.0.254, where the kernel guest of e2e/kernel-tests.sh reaches this API server.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "$0")" && pwd -P)
MARK=.weft-controlplane
READY_TIMEOUT=${WEFT_CP_READY_TIMEOUT:-120}
STOP_TIMEOUT=10

die() { printf 'e2e/controlplane.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'e2e/controlplane.sh: %s\n' "$*" >&2; }

[ $# -ge 1 ] || die "usage: e2e/controlplane.sh up|down|env [DIR] (or set WEFT_CP_DIR)"
cmd=$1
DIR=${2:-${WEFT_CP_DIR:-}}
[ -n "$DIR" ] || die "no directory: pass DIR or set WEFT_CP_DIR"

# running NAME: whether the process DIR/NAME.pid names is running (not a zombie).
running() {
  local pidf=$DIR/$1.pid pid state
  [ -f "$pidf" ] || return 1
  pid=$(cat "$pidf")
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/.*) \(.\).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# alive NAME: running, and still that binary (not a reused pid). Not for the moment after the
# start: until the child has exec'd, its command line is this script's.
alive() {
  running "$1" && grep -qa -- "$1" "/proc/$(cat "$DIR/$1.pid")/cmdline"
}

# stop NAME: SIGTERM, then SIGKILL after STOP_TIMEOUT seconds.
stop() {
  alive "$1" || { rm -f "$DIR/$1.pid"; return 0; }
  local pid i
  pid=$(cat "$DIR/$1.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DIR/$1.pid"
}

down() {
  [ -e "$DIR" ] || return 0
  [ -f "$DIR/$MARK" ] || die "$DIR is not a control plane's directory (no $MARK): not removing it"
  stop kube-apiserver
  stop etcd
  rm -rf "$DIR"
}

# free_port: a loopback TCP port nothing listens on.
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$p" | grep -q .; then
      echo "$p"
      return
    fi
  done
  die "found no free port"
}

# wait_for NAME URL PATTERN CURL-ARGS...: polls URL until its body matches the glob PATTERN, for
# READY_TIMEOUT seconds, while NAME's process lives. Returns 1 if NAME exited because another
# process took one of its ports between free_port and its bind (the caller retries on other
# ports); any other exit, or no answer in time, is fatal.
wait_for() {
  local name=$1 url=$2 expect=$3 i body
  shift 3
  for ((i = 0; i < READY_TIMEOUT * 4; i++)); do
    running "$name" || {
      if grep -q 'address already in use' "$DIR/$name.log" 2>/dev/null; then
        say "$name lost a port to another process; retrying on other ports"
        return 1
      fi
      tail -n 30 "$DIR/$name.log" >&2 || true
      die "$name exited while starting (log: $DIR/$name.log)"
    }
    body=$(curl -s -m 2 "$@" "$url" || true)
    # shellcheck disable=SC2254
    case $body in $expect) return 0 ;; esac
    sleep 0.25
  done
  tail -n 30 "$DIR/$name.log" >&2 || true
  die "$name was not ready at $url within $READY_TIMEOUT s (last answer: ${body:-none})"
}

certs() {
  local c=$DIR/pki
  mkdir -p "$c"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$c/ca.key" -out "$c/ca.pem" -days 7 \
    -subj /CN=weft-controlplane-ca 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$c/apiserver.key" -out "$c/apiserver.csr" \
    -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.0.2.2,IP:10.99.0.254,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$c/apiserver.ext"
  openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.pem" -CAkey "$c/ca.key" -CAcreateserial \
    -days 7 -extfile "$c/apiserver.ext" -out "$c/apiserver.pem" 2>/dev/null
  # The service-account token signing pair.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$c/sa.key" 2>/dev/null
  openssl pkey -in "$c/sa.key" -pubout -out "$c/sa.pub"
  chmod 600 "$c"/*.key
}

# start_apiserver: kube-apiserver on $api_port over etcd on $etcd_port, in the background.
start_apiserver() {
  local p=$DIR/pki
  setsid "$apiserver_bin" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$DIR/pki" --tls-cert-file "$p/apiserver.pem" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.pem" \
    --service-cluster-ip-range 10.96.0.0/16,fd00:96::/112 --allow-privileged=true \
    --authorization-mode RBAC --token-auth-file "$DIR/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --disable-admission-plugins ServiceAccount \
    >"$DIR/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$DIR/kube-apiserver.pid"
}

up() {
  if [ -f "$DIR/$MARK" ] && alive etcd && alive kube-apiserver; then
    say "already up in $DIR"
    echo "$DIR/kubeconfig"
    return
  fi
  if [ -e "$DIR" ]; then
    if [ -f "$DIR/$MARK" ]; then
      down
    elif [ -n "$(ls -A "$DIR")" ]; then
      die "$DIR exists and is not empty: refusing to use it"
    fi
  fi
  for c in openssl curl ss; do
    command -v "$c" >/dev/null 2>&1 || die "$c is not installed"
  done
  local tools etcd_bin apiserver_bin
  tools=$("$HERE/tools.sh" etcd kube-apiserver)
  etcd_bin=$(sed -n 's/^etcd=//p' <<<"$tools")
  apiserver_bin=$(sed -n 's/^kube-apiserver=//p' <<<"$tools")
  [ -x "$etcd_bin" ] && [ -x "$apiserver_bin" ] || die "e2e/tools.sh gave no etcd or kube-apiserver"

  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  touch "$DIR/$MARK"
  # A failure from here on leaves nothing running.
  trap 'status=$?; [ $status -eq 0 ] || { say "start failed; tearing down"; down; }' EXIT

  certs
  local token etcd_port peer_port api_port
  token=$(openssl rand -hex 24)
  printf '%s,admin,admin,system:masters\n' "$token" >"$DIR/tokens.csv"
  chmod 600 "$DIR/tokens.csv"
  local attempt
  for ((attempt = 1; ; attempt++)); do
    ((attempt <= 5)) || die "etcd found no free ports in 5 attempts"
    etcd_port=$(free_port)
    peer_port=$(free_port)
    [ "$peer_port" != "$etcd_port" ] || continue
    rm -rf "$DIR/etcd"
    setsid "$etcd_bin" --name weft-cp --data-dir "$DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" \
      --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "weft-cp=http://127.0.0.1:$peer_port" \
      --unsafe-no-fsync >"$DIR/etcd.log" 2>&1 </dev/null &
    echo $! >"$DIR/etcd.pid"
    wait_for etcd "http://127.0.0.1:$etcd_port/health" '*"health":"true"*' && break
  done

  local p=$DIR/pki
  for ((attempt = 1; ; attempt++)); do
    ((attempt <= 5)) || die "kube-apiserver found no free port in 5 attempts"
    api_port=$(free_port)
    start_apiserver
    wait_for kube-apiserver "https://127.0.0.1:$api_port/readyz" ok \
      --cacert "$p/ca.pem" -H "Authorization: Bearer $token" && break
  done

  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weft-cp
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 <"$p/ca.pem")
users:
- name: admin
  user:
    token: $token
contexts:
- name: weft-cp
  context:
    cluster: weft-cp
    user: admin
current-context: weft-cp
EOF
  chmod 600 "$DIR/kubeconfig"
  printf 'etcd=http://127.0.0.1:%s\nkube-apiserver=https://127.0.0.1:%s\n' "$etcd_port" "$api_port" >"$DIR/endpoints"
  trap - EXIT
  say "up: kube-apiserver https://127.0.0.1:$api_port, etcd http://127.0.0.1:$etcd_port (logs in $DIR)"
  echo "$DIR/kubeconfig"
}

case $cmd in
  up) up ;;
  down) down ;;
  env)
    [ -f "$DIR/$MARK" ] && alive kube-apiserver || die "no control plane is up in $DIR"
    echo "KUBECONFIG=$(cd "$DIR" && pwd -P)/kubeconfig"
    ;;
  *) die "unknown command '$cmd' (up, down or env)" ;;
esac
