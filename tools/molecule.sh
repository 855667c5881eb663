#!/usr/bin/env bash
# Run molecule for one scenario with the project's tools and settings:
#   tools/molecule.sh SCENARIO [test|converge|verify|destroy|...]
# Scenarios share node names and this machine's two cores, so runs are serialised with a lock.
source "$(dirname "$0")/lab/lib.sh"
scenario="${1:?usage: tools/molecule.sh SCENARIO [ACTION]}"
action="${2:-test}"
activate_tools
ensure_lab_pki
ensure_lab_ssh_key
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
if [ "$action" = test ]; then
  # Leftover nodes of an interrupted run (every scenario's nodes join this network), removed under the lock;
  # the network too when it lacks the fixed subnet the nodes' addresses need (.config/molecule/ssh_config).
  exec flock /var/lock/autoglm-molecule.lock bash -c '
    rm -rf "$MOLECULE_EPHEMERAL_DIRECTORY"
    docker ps -aq --filter network=autoglm-molecule | xargs -r docker rm -f >/dev/null
    subnet="$(docker network inspect -f "{{range .IPAM.Config}}{{.Subnet}}{{end}}" autoglm-molecule 2>/dev/null || true)"
    if [ -n "$subnet" ] && [ "$subnet" != 10.77.20.0/24 ]; then docker network rm autoglm-molecule >/dev/null; fi
    exec molecule test -s "$1"' _ "$scenario"
fi
exec flock /var/lock/autoglm-molecule.lock molecule "$action" -s "$scenario"
