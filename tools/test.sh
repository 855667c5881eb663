#!/usr/bin/env bash
# Every test: lint (ruff, ansible-lint, role READMEs, ansible-test sanity), ansible-doc for each module, unit and
# integration tests, and each molecule scenario (check -> converge -> idempotence -> verify) on systemd nodes,
# in two lanes side by side (the default scenario's fleet; the tests, then the role scenarios).
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
# From the start, so the total is what CI's own clock reads (the tool venv is built on a fresh machine).
run_started=$SECONDS
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
log "role READMEs match their meta/argument_specs.yml"
tools/role_readme.py --check
log "ansible-test sanity (the collection checks Galaxy and Automation Hub run; exceptions: tests/sanity/ignore-2.X.txt)"
sanity_started=$SECONDS
tools/sanity.sh
echo "  ansible-test sanity passed in $((SECONDS - sanity_started))s"
lint_seconds=$((SECONDS - run_started))
# Time per stage, printed as a table at the end (CI's budget is tracked from it). The lanes run in the
# background, so each stage appends "name|seconds|result|seconds per step" to a file.
results="$REPO_ROOT/.cache/test-stages"
: > "$results"
record() { printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "${4:-}" >> "$results"; }
print_timings() {
  echo "stage                         seconds  result  seconds per step"
  printf '%-28s %6ss  %-6s\n' "tool venv and lint" "$lint_seconds" passed
  while IFS='|' read -r name seconds result steps; do
    printf '%-28s %6ss  %-6s  %s\n' "$name" "$seconds" "$result" "$steps"
  done < "$results"
  echo "total                         $((SECONDS - run_started))s"
}

setup_started=$SECONDS
# promtool and amtool for the monitoring role's rule tests (unpacked once from Debian's packages).
ensure_prometheus_tools
# haproxy for the gateway_server module's tests (unpacked once from Debian's packages).
ensure_haproxy_binary
# age and gpg for the sealed-weights tests (and molecule model_weights's sealed package).
ensure_sealing_tools
# Exit 5 means no test ran: that is a failure here, not a pass.
run_pytest() { pytest -q -p no:cacheprovider -n 2 --durations=15 tests; }
if [ "$quick" -eq 1 ]; then
  log "unit and integration tests"
  run_pytest
  exit 0
fi
ensure_docker
ensure_node_image
# Made once here, before the lanes start, so two scenarios never make them at the same time.
ensure_lab_pki
ensure_lab_ssh_key
ensure_cpu_torch_wheels "$TOOL_VENV/bin/pip"
record "set-up before the lanes" "$((SECONDS - setup_started))" passed

run_scenario() {
  local scenario="$1" start=$SECONDS log="$REPO_ROOT/.cache/molecule-$scenario.log" steps
  local rc=0
  "$REPO_ROOT/tools/molecule.sh" "$scenario" test > "$log" 2>&1 || rc=$?
  steps="$(sed -n 's/^steps: //p' "$log" | tail -n 1)"
  if [ "$rc" -eq 0 ]; then
    echo "  molecule $scenario passed in $((SECONDS - start))s ($steps)"
    record "molecule $scenario" "$((SECONDS - start))" passed "$steps"
  else
    echo "  molecule $scenario FAILED in $((SECONDS - start))s (log: .cache/molecule-$scenario.log)"
    record "molecule $scenario" "$((SECONDS - start))" FAILED "$steps"
  fi
}
run_pytest_stage() {
  local start=$SECONDS
  if run_pytest > "$REPO_ROOT/.cache/pytest.log" 2>&1; then
    echo "  unit and integration tests passed in $((SECONDS - start))s"
    record "unit and integration tests" "$((SECONDS - start))" passed
  else
    echo "  unit and integration tests FAILED in $((SECONDS - start))s (log: .cache/pytest.log)"
    record "unit and integration tests" "$((SECONDS - start))" FAILED
  fi
}

# Two lanes on two Docker networks (tools/molecule.sh locks per network): the default scenario's fleet, the
# longest stage (then monitoring, on the same network), and beside it the unit and integration tests, then the
# role scenarios (role-* nodes). On two cores this fills the time molecule spends waiting on nodes, and CI takes
# the longer lane, not the sum.
# A third lane (the tests apart from the role scenarios) was measured slower: load 14 on the two cores, each role
# scenario three times as long (docker_engine 661 s against 201 s).
if [ "${#scenarios[@]}" -eq 0 ]; then
  for dir in molecule/*/; do scenarios+=("$(basename "$dir")"); done
fi
# A scenario's lane is its network's: default first on the fleet's network, then the scenarios moved onto it
# (monitoring) so that the two lanes take about as long as each other.
fleet_lane=(); role_lane=()
for scenario in "${scenarios[@]}"; do
  if [ "$scenario" = default ]; then fleet_lane=("$scenario" "${fleet_lane[@]}")
  elif grep -q 'name: autoglm-molecule-roles$' "molecule/$scenario/molecule.yml" 2>/dev/null \
       || ! grep -q 'docker_networks:' "molecule/$scenario/molecule.yml"; then role_lane+=("$scenario")
  else fleet_lane+=("$scenario"); fi
done
log "molecule scenarios: ${fleet_lane[*]:-none} | unit and integration tests, then ${role_lane[*]:-none}"
(for scenario in "${fleet_lane[@]}"; do run_scenario "$scenario"; done) &
fleet_pid=$!
(run_pytest_stage; for scenario in "${role_lane[@]}"; do run_scenario "$scenario"; done) &
role_pid=$!
wait "$fleet_pid" "$role_pid" || true
# A lane that died before recording a stage must not read as a pass.
for stage in "unit and integration tests" "${scenarios[@]/#/molecule }"; do
  grep -q "^$stage|" "$results" || record "$stage" 0 "FAILED"
done

# Why each failed stage failed, after both lanes are done so the lines do not interleave.
failed=()
while IFS='|' read -r name _ result _; do
  [ "$result" = FAILED ] || continue
  if [ "$name" = "unit and integration tests" ]; then
    echo "unit and integration tests FAILED; last lines of .cache/pytest.log:"
    tail -n 80 "$REPO_ROOT/.cache/pytest.log"
    failed+=(pytest)
    continue
  fi
  scenario="${name#molecule }"
  # The first failures say why; the last lines are mostly the destroy that follows them.
  echo "molecule $scenario FAILED; first failures in .cache/molecule-$scenario.log:"
  grep -n -m 20 -A 12 -E '^(fatal|failed):|UNREACHABLE!|^E  |^FAILED [^-]|^ERROR ' "$REPO_ROOT/.cache/molecule-$scenario.log" | head -n 120
  echo "  last lines:"
  tail -n 25 "$REPO_ROOT/.cache/molecule-$scenario.log"
  failed+=("$scenario")
done < "$results"
if grep -q '^unit and integration tests|[0-9]*|passed|' "$results"; then
  # The slowest tests, for the time budget (pytest's --durations table, which ends with the summary line).
  sed -n '/slowest 15 durations/,/^$/p' "$REPO_ROOT/.cache/pytest.log"
fi
print_timings
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
log "all tests passed"
