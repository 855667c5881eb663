#!/usr/bin/env bash
# The embedded lab: systemd containers standing in for GPU servers (lab-node1..3), the in-cluster mirror
# (lab-mirror) and the upstream hub (lab-hub, standing in for huggingface.co), and the demo that deploys
# onto them.
#   tools/lab.sh demo     set up what is missing, bring the lab up, run site.yml twice (the second must
#                         change nothing), print a chat completion from every node
#   tools/lab.sh up       only bring the nodes up
#   tools/lab.sh down     remove the nodes and their network
#   tools/lab.sh status   list the nodes
source "$(dirname "$0")/lab/lib.sh"
# LAB_GPU_NODES sets how many GPU nodes `up` starts (inventories/lab lists 3; the converge benchmark varies it).
LAB_NODES=(lab-hub lab-mirror $(seq -f 'lab-node%g' 1 "${LAB_GPU_NODES:-3}"))
LAB_NETWORK=autoglm-lab
# Fixed addresses, as a real fleet's inventory has: inventories/lab/hosts.yml reaches nodes by them over SSH.
LAB_SUBNET=10.77.10.0/24

lab_address() {
  case "$1" in
    lab-hub) echo 10.77.10.10 ;;
    lab-mirror) echo 10.77.10.11 ;;
    lab-node*) echo "10.77.10.$((20 + ${1#lab-node}))" ;;
  esac
}

lab_up() {
  ensure_lab_ssh_key
  if [ "$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$LAB_NETWORK" 2>/dev/null)" != "$LAB_SUBNET" ]; then
    lab_down_nodes; docker network rm "$LAB_NETWORK" >/dev/null 2>&1 || true
    docker network create --subnet "$LAB_SUBNET" "$LAB_NETWORK" >/dev/null
  fi
  for node in "${LAB_NODES[@]}"; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$node" 2>/dev/null)" = "true" ]; then continue; fi
    docker rm -f "$node" >/dev/null 2>&1 || true
    log "Starting $node ($(lab_address "$node"))"
    # The options that run systemd here without --privileged (see ../shared/LAB.md); the lab's public key
    # is ops' only authorized key.
    # /dev/shm as a real host has room in it: vLLM's engine and workers talk through 160 MiB of ring
    # buffers there, past Docker's 64 MiB default.
    docker run -d --name "$node" --hostname "$node" --network "$LAB_NETWORK" --ip "$(lab_address "$node")" \
      --cap-add SYS_ADMIN --cap-add NET_ADMIN --cgroupns host --shm-size 1g \
      -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
      -v "$AUTOGLM_LAB_SSH/id_ed25519.pub:/etc/ssh/authorized_keys/ops:ro" \
      --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      autoglm-node:latest /lib/systemd/systemd >/dev/null
  done
  for node in "${LAB_NODES[@]}"; do
    wait_for_ssh "$node" "$(lab_address "$node")"
    echo "  $node: sshd up at $(lab_address "$node")"
  done
}

lab_down_nodes() {
  docker ps -aq --filter "name=^lab-(hub|mirror|node[0-9]+)$" | xargs -r docker rm -f >/dev/null
}

lab_down() {
  lab_down_nodes
  docker network rm "$LAB_NETWORK" >/dev/null 2>&1 || true
  log "Lab removed"
}

run_playbook() {
  activate_tools
  cd "$REPO_ROOT"
  python3 "$REPO_ROOT/tools/lab/run_playbook.py" "$@"
}

run_site() { ensure_lab_pki; run_playbook site.yml -i inventories/lab "$@"; }

publish_upstream() {
  log "lab-hub publishes the tiny test model (stand-in for huggingface.co)"
  run_playbook tools/lab/hub.yml -i inventories/lab
}

ask_gateway() {
  # One chat completion through the fleet's endpoint (HAProxy on lab-mirror, inventories/lab/group_vars/gateway),
  # as a client sends it, with the client key: the gateway picks a replica and logs the request.
  python3 - "http://10.77.10.11:8080" "lab-gateway-key-not-secret" <<'PY'
import json, sys, urllib.request
base, key = sys.argv[1:3]
def call(path, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.load(resp)
model = call("/v1/models")["data"][0]["id"]
answer = call("/v1/chat/completions", {"model": model, "max_tokens": 16,
                                       "messages": [{"role": "user", "content": "Reply with one word."}]})
print("gateway %s/v1, model %s: %r" % (base, model, answer["choices"][0]["message"]["content"]))
PY
}

show_monitoring() {
  # What Prometheus on lab-mirror (roles/monitoring) scrapes and what fires: every target up once each has been
  # scraped (they are asked every scrape interval), and no alert on a healthy lab.
  python3 - "http://10.77.10.11:9090" <<'PY'
import json, sys, time, urllib.request
base = sys.argv[1]
def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as resp:
        return json.load(resp)["data"]
deadline = time.monotonic() + 180
while True:
    targets = get("/api/v1/targets?state=active")["activeTargets"]
    if (targets and all(t["health"] != "unknown" for t in targets)) or time.monotonic() > deadline:
        break
    time.sleep(3)
for t in sorted(targets, key=lambda t: (t["labels"]["job"], t["labels"].get("instance", ""))):
    print("target %-8s %-22s %s%s" % (t["health"], t["labels"]["job"], t["labels"].get("instance", ""),
                                      "  (" + t["lastError"] + ")" if t.get("lastError") else ""))
up = sum(t["health"] == "up" for t in targets)
firing = [a for a in get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
for a in firing:
    print("alert firing: %s %s" % (a["labels"]["alertname"], a["labels"].get("instance", "")))
print("prometheus %s: %d of %d targets up, %d alerts firing" % (base, up, len(targets), len(firing)))
sys.exit(0 if up == len(targets) and targets else 1)
PY
}

case "${1:-demo}" in
  up) need_root; ensure_tool_venv; ensure_docker; ensure_node_image; ensure_lab_pki; lab_up ;;
  down) ensure_docker; lab_down ;;
  status) docker ps -a --filter "name=lab-" --format '{{.Names}}\t{{.Status}}' ;;
  site) shift; run_site "$@" ;;
  demo)
    need_root; ensure_tool_venv; ensure_docker; ensure_node_image; ensure_lab_pki; lab_up
    publish_upstream
    log "ansible-playbook site.yml -i inventories/lab"
    run_site
    log "Rerun: a converged fleet reports changed=0"
    run_site --expect-no-changes
    log "Every node answers a chat completion"
    run_playbook playbooks/smoke_test.yml -i inventories/lab --show-task "Print the answer"
    log "The fleet's one endpoint (the gateway) answers"
    ask_gateway
    log "Prometheus (lab-mirror): the targets up and the alerts firing"
    show_monitoring
    ;;
  *) echo "usage: $0 demo|up|down|status|site" >&2; exit 2 ;;
esac
