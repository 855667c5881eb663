#!/usr/bin/env bash
# Run molecule for one scenario with the project's tools and settings:
#   tools/molecule.sh SCENARIO [test|converge|verify|destroy|...]
# Scenarios share node names and this machine's two cores, so runs are serialised with a lock.
source "$(dirname "$0")/lab/lib.sh"
scenario="${1:?usage: tools/molecule.sh SCENARIO [ACTION]}"
action="${2:-test}"
activate_tools
ensure_lab_pki
export NO_COLOR=1 ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
cd "$REPO_ROOT"
exec flock /var/lock/autoglm-molecule.lock molecule "$action" -s "$scenario"
