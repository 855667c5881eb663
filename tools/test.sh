#!/usr/bin/env bash
# Every test: lint (ruff, ansible-lint, role READMEs, ansible-test sanity), ansible-doc for each module, unit and
# integration tests, then each molecule scenario (check -> converge -> idempotence -> verify) on systemd nodes.
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
run_started=$SECONDS

log "ruff"
ruff check .
log "ansible-doc renders every module"
for module in plugins/modules/*.py; do
  name="autoglm.deploy.$(basename "$module" .py)"
  ansible-doc "$name" >/dev/null || { echo "ansible-doc failed for $name" >&2; exit 1; }
done
log "ansible-lint (production profile)"
ansible-lint --profile production -q
log "role READMEs match their meta/argument_specs.yml"
tools/role_readme.py --check
log "ansible-test sanity (the collection checks Galaxy and Automation Hub run; exceptions: tests/sanity/ignore-2.X.txt)"
sanity_started=$SECONDS
tools/sanity.sh
echo "  ansible-test sanity passed in $((SECONDS - sanity_started))s"
lint_seconds=$((SECONDS - run_started))
# Time per stage, printed as a table at the end (CI's budget is tracked from it).
timings=()
record() { timings+=("$(printf '%-28s %6ss  %s' "$1" "$2" "$3")"); }
print_timings() {
  echo "stage                         seconds  result"
  printf '%-28s %6ss  %s\n' "tool venv and lint" "$lint_seconds" passed
  printf '%s\n' "${timings[@]}"
  echo "total                         $((SECONDS - run_started))s"
}

# pytest runs beside molecule when both run: molecule waits on containers and leaves a core idle half the
# time. Exit 5 means no test ran: that is a failure here, not a pass.
run_pytest() { pytest -q -p no:cacheprovider -n 2 --durations=15 tests; }
if [ "$quick" -eq 1 ]; then
  log "unit and integration tests"
  run_pytest
  exit 0
fi
ensure_docker
ensure_node_image
log "unit and integration tests (in the background, log: .cache/pytest.log)"
pytest_started=$SECONDS
run_pytest > "$REPO_ROOT/.cache/pytest.log" 2>&1 &
pytest_pid=$!
if [ "${#scenarios[@]}" -eq 0 ]; then
  for dir in molecule/*/; do scenarios+=("$(basename "$dir")"); done
fi
failed=()
for scenario in "${scenarios[@]}"; do
  log "molecule scenario: $scenario"
  start=$SECONDS
  if "$REPO_ROOT/tools/molecule.sh" "$scenario" test > "$REPO_ROOT/.cache/molecule-$scenario.log" 2>&1; then
    echo "  passed in $((SECONDS - start))s"
    record "molecule $scenario" "$((SECONDS - start))" passed
  else
    # The first failures say why; the last lines are mostly the destroy that follows them.
    echo "  FAILED in $((SECONDS - start))s; first failures in .cache/molecule-$scenario.log:"
    grep -n -m 20 -A 12 -E '^(fatal|failed):|UNREACHABLE!|^E  |^FAILED [^-]|^ERROR ' "$REPO_ROOT/.cache/molecule-$scenario.log" | head -n 120
    echo "  last lines:"
    tail -n 25 "$REPO_ROOT/.cache/molecule-$scenario.log"
    record "molecule $scenario" "$((SECONDS - start))" FAILED
    failed+=("$scenario")
  fi
done
if wait "$pytest_pid"; then
  # The slowest tests, for the time budget (pytest's --durations table).
  sed -n '/slowest 15 durations/,/^$/p' "$REPO_ROOT/.cache/pytest.log"
  tail -n 1 "$REPO_ROOT/.cache/pytest.log"
  record "unit and integration tests" "$((SECONDS - pytest_started))" "passed (ran beside molecule)"
else
  echo "unit and integration tests FAILED; last lines of .cache/pytest.log:"
  tail -n 80 "$REPO_ROOT/.cache/pytest.log"
  record "unit and integration tests" "$((SECONDS - pytest_started))" "FAILED (ran beside molecule)"
  failed+=(pytest)
fi
print_timings
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
log "all tests passed"
