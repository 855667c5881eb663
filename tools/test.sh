#!/usr/bin/env bash
# Every test: lint (ruff, ansible-lint), ansible-doc for each module, unit and integration tests,
# then each molecule scenario (check -> converge -> idempotence -> verify) on systemd nodes.
# Sets up what is missing first (tool venv, Docker engine, node image). Run as root.
#   tools/test.sh                 everything
#   tools/test.sh --quick         no molecule
#   tools/test.sh --scenario NAME only that molecule scenario (repeatable), after the quick gates
source "$(dirname "$0")/lab/lib.sh"
quick=0; scenarios=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --scenario) scenarios+=("$2"); shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
need_root
ensure_tool_venv
activate_tools
cd "$REPO_ROOT"; mkdir -p .cache

log "ruff"
ruff check .
log "ansible-doc renders every module"
for module in plugins/modules/*.py; do
  name="autoglm.deploy.$(basename "$module" .py)"
  ansible-doc "$name" >/dev/null || { echo "ansible-doc failed for $name" >&2; exit 1; }
done
log "ansible-lint (production profile)"
ansible-lint --profile production -q
log "unit and integration tests"
# Exit 5 means no test ran: that is a failure here, not a pass.
pytest -q -p no:cacheprovider -n 2 tests

[ "$quick" -eq 1 ] && exit 0
ensure_docker
ensure_node_image
if [ "${#scenarios[@]}" -eq 0 ]; then
  for dir in molecule/*/; do scenarios+=("$(basename "$dir")"); done
fi
failed=()
for scenario in "${scenarios[@]}"; do
  log "molecule scenario: $scenario"
  start=$SECONDS
  if "$REPO_ROOT/tools/molecule.sh" "$scenario" test > "$REPO_ROOT/.cache/molecule-$scenario.log" 2>&1; then
    echo "  passed in $((SECONDS - start))s"
  else
    echo "  FAILED in $((SECONDS - start))s; last lines of .cache/molecule-$scenario.log:"
    tail -n 60 "$REPO_ROOT/.cache/molecule-$scenario.log"
    failed+=("$scenario")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "molecule scenarios failed: ${failed[*]}" >&2
  exit 1
fi
log "all tests passed"
