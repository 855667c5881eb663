#!/usr/bin/env bash
# Run molecule for one scenario with the project's tools and settings:
#   tools/molecule.sh SCENARIO [test|converge|verify|destroy|...]
# Scenarios on the same Docker network share node names and addresses, so their runs are serialised with
# a lock per network: the default scenario's fleet and the role scenarios' nodes (role-*) are on two
# networks and run side by side (tools/test.sh).
source "$(dirname "$0")/lab/lib.sh"
scenario="${1:?usage: tools/molecule.sh SCENARIO [ACTION]}"
action="${2:-test}"
activate_tools
ensure_lab_pki
ensure_lab_ssh_key
ensure_sealing_tools
# The lab's CPU torchvision, torchaudio and torchcodec (inventories/lab/group_vars/gpu_nodes/venv.yml).
ensure_cpu_torch_wheels "$TOOL_VENV/bin/pip"
export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
# Molecule's state (created, converged, inventory) and the SSH masters live in this checkout, never in
# ~/.ansible/tmp: that folder is keyed by the checkout folder's name only, so two clones named alike
# (a developer's and CI's) would share it, and a run interrupted in one makes the other skip its create.
# Control sockets are per scenario too: the next scenario's nodes reuse the same addresses with new
# host keys, and a master kept alive for the old node would carry the new one's sessions.
export MOLECULE_EPHEMERAL_DIRECTORY="$REPO_ROOT/.cache/molecule/$scenario"
export ANSIBLE_SSH_CONTROL_PATH_DIR="$MOLECULE_EPHEMERAL_DIRECTORY/cp"
cd "$REPO_ROOT"
# The scenario's network and subnet: its own platforms' if it lists them, else the shared ones.
read -r network subnet < <(python3 - "$scenario" <<'PY'
import sys, yaml
scenario = yaml.safe_load(open("molecule/%s/molecule.yml" % sys.argv[1])) or {}
platforms = scenario.get("platforms") or yaml.safe_load(open(".config/molecule/config.yml"))["platforms"]
net = platforms[0]["docker_networks"][0]
print(net["name"], net["ipam_config"][0]["subnet"])
PY
)
export AUTOGLM_MOLECULE_NETWORK="$network" AUTOGLM_MOLECULE_SUBNET="$subnet"
lock="/var/lock/$network.lock"
if [ "$action" = test ]; then
  # Leftover nodes of an interrupted run (every scenario's nodes join their lane's network), removed under
  # the lock; the network too when it lacks the fixed subnet the nodes' addresses need (.config/molecule/ssh_config).
  # Each step's seconds end the output (tools/molecule_steps.py); lib.sh's pipefail keeps molecule's status.
  flock "$lock" bash -c '
    rm -rf "$MOLECULE_EPHEMERAL_DIRECTORY"
    docker ps -aq --filter "network=$AUTOGLM_MOLECULE_NETWORK" | xargs -r docker rm -f >/dev/null
    subnet="$(docker network inspect -f "{{range .IPAM.Config}}{{.Subnet}}{{end}}" "$AUTOGLM_MOLECULE_NETWORK" 2>/dev/null || true)"
    if [ -n "$subnet" ] && [ "$subnet" != "$AUTOGLM_MOLECULE_SUBNET" ]; then docker network rm "$AUTOGLM_MOLECULE_NETWORK" >/dev/null; fi
    exec molecule test -s "$1"' _ "$scenario" 2>&1 | python3 "$REPO_ROOT/tools/molecule_steps.py"
  exit
fi
exec flock "$lock" molecule "$action" -s "$scenario"
