"""The monitoring role's configuration as Prometheus' own tools read it: the rules, prometheus.yml and
alertmanager.yml rendered by Ansible from the role's templates and defaults, checked by promtool and amtool
(Debian's releases, tools/lab/lib.sh ensure_prometheus_tools), and the alert rules unit-tested with
`promtool test rules` on series shaped as the engines export them (tests/fixtures/metrics: a recorded vLLM)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support.playbook import run_local_playbook

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "monitoring"
VLLM_METRICS = REPO / "tests" / "fixtures" / "metrics" / "vllm-0.32.0-cpu.txt"


@pytest.fixture(scope="session")
def tools() -> Path:
    subprocess.run(["bash", "-c", 'source tools/lab/lib.sh && ensure_prometheus_tools'], cwd=REPO, check=True)
    out = subprocess.run(["bash", "-c", 'source tools/lab/lib.sh && printf %s "$AUTOGLM_PROMETHEUS_TOOLS"'],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    return Path(out)


def render(tmp_path: Path, **overrides) -> Path:
    """The role's three configuration files, rendered by Ansible's template module with its defaults."""
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "file_sd.json").write_text("[]\n")
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
             "tasks": [{"ansible.builtin.template": {"src": str(ROLE / "templates" / "{{ item }}.j2"),
                                                     "dest": str(out / "{{ item }}"), "mode": "0644"},
                        "loop": ["autoglm-rules.yml", "prometheus.yml", "alertmanager.yml"]}]}]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    settings = {"_monitoring_rules_path": str(out / "autoglm-rules.yml"),
                "monitoring_inference_file_sd_path": str(out / "file_sd.json"), **overrides}
    rc, _report, output = run_local_playbook(playbook, tmp_path, extra_vars=(json.dumps(settings),))
    assert rc == 0, output[-3000:]
    return out


def run(tool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def test_promtool_and_amtool_accept_the_rendered_configuration(tools, tmp_path):
    out = render(tmp_path, monitoring_node_exporter_hosts=["localhost", "localhost"],
                 monitoring_dcgm_exporter_hosts=["localhost"],
                 monitoring_alertmanager_webhook_urls=["https://hooks.example/alerts?key=a%20b"],
                 monitoring_extra_scrape_configs=[{"job_name": "gateway", "static_configs": [{"targets": ["g:8404"]}]}],
                 monitoring_external_labels={"site": "lab"})
    for tool, args in ((tools / "promtool", ("check", "rules", "autoglm-rules.yml")),
                       (tools / "promtool", ("check", "config", "prometheus.yml")),
                       (tools / "amtool", ("check-config", "alertmanager.yml"))):
        result = run(tool, *args, cwd=out)
        assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((out / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "autoglm-inference", "node", "dcgm", "gateway"}
    assert jobs["node"]["static_configs"] == [{"targets": ["localhost:9100"], "labels": {"instance": "localhost"}}]
    assert jobs["autoglm-inference"]["file_sd_configs"] == [{"files": [str(out / "file_sd.json")]}]
    assert config["global"]["external_labels"] == {"site": "lab"}
    routes = yaml.safe_load((out / "alertmanager.yml").read_text())
    assert routes["route"]["receiver"] == "webhooks"
    assert routes["receivers"][1]["webhook_configs"] == [{"url": "https://hooks.example/alerts?key=a%20b", "send_resolved": True}]


def test_without_webhooks_alerts_stay_in_alertmanager(tools, tmp_path):
    out = render(tmp_path)
    result = run(tools / "amtool", "check-config", "alertmanager.yml", cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load((out / "alertmanager.yml").read_text())["receivers"] == [{"name": "nowhere"}]


def test_the_rules_name_only_metrics_the_engines_export():
    """Each engine metric a rule reads is in what the engine serves: the recorded vLLM /metrics, the built-in
    server's declarations; SGLang's names are those of its collector (python/sglang/srt/metrics/collector.py)."""
    rules = (ROLE / "templates" / "autoglm-rules.yml.j2").read_text()
    vllm = {line.split("{")[0].split(" ")[0] for line in VLLM_METRICS.read_text().splitlines() if not line.startswith("#")}
    served = set(re.findall(r'declare\("(autoglm_serve_\w+)"', (REPO / "server" / "autoglm_serve" / "api.py").read_text()))
    used_vllm = set(re.findall(r"\b(vllm:\w+|http_requests_total)\b", rules))
    used_served = set(re.findall(r"\b(autoglm_serve_\w+?)(?:_bucket)?\b", rules))
    assert used_vllm and used_served
    assert {name for name in used_vllm if name not in vllm} == set()
    assert {name for name in used_served if name not in served} == set()
    assert "vllm:e2e_request_latency_seconds_bucket" in vllm and "vllm:time_to_first_token_seconds_bucket" in vllm


def test_the_dashboard_reads_recorded_series_or_exported_metrics():
    dashboard = json.loads((ROLE / "files" / "grafana" / "autoglm-fleet.json").read_text())
    rules = (ROLE / "templates" / "autoglm-rules.yml.j2").read_text()
    recorded = set(re.findall(r"record: (\S+)", rules))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) == len(dashboard["panels"]) >= 9
    for expr in exprs:
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\{|\s|$|\))", expr)) - {"count", "or", "vector", "sum", "by"}
        assert names <= recorded | {"up", "ALERTS", "DCGM_FI_DEV_GPU_UTIL"}, (expr, names)


UNIT_TESTS = r"""
rule_files: [autoglm-rules.yml]
evaluation_interval: 15s
tests:
  # A replica whose metrics endpoint stops answering: pending for 2 minutes, then firing.
  - interval: 15s
    input_series:
      - series: 'up{job="autoglm-inference", instance="node3", replica="node3:8001", backend="vllm"}'
        values: '1x3 0x40'
      - series: 'up{job="autoglm-inference", instance="node3", replica="node3:8000", backend="vllm"}'
        values: '1x43'
      - series: 'up{job="autoglm-inference", instance="node1", replica="node1:8000", backend="transformers"}'
        values: '1x43'
    alert_rule_test:
      - {alertname: AutoglmReplicaDown, eval_time: 2m, exp_alerts: []}
      - alertname: AutoglmReplicaDown
        eval_time: 4m
        exp_alerts:
          - exp_labels: {severity: critical, job: autoglm-inference, instance: node3, replica: "node3:8001", backend: vllm}
            exp_annotations:
              summary: Replica node3:8001 does not answer its metrics endpoint
              description: >-
                Prometheus could not scrape node3:8001 (vllm) for 2m. Look at journalctl -u autoglm-inference@PORT on node3.

  # vLLM (names and labels as recorded): 6 requests/s, one answer in ten a server error.
  - interval: 15s
    input_series:
      - series: 'http_requests_total{job="autoglm-inference", instance="node3", handler="/v1/chat/completions", method="POST", status="2xx"}'
        values: '0+81x80'
      - series: 'http_requests_total{job="autoglm-inference", instance="node3", handler="/v1/chat/completions", method="POST", status="5xx"}'
        values: '0+9x80'
      - series: 'http_requests_total{job="autoglm-inference", instance="node3", handler="/metrics", method="GET", status="2xx"}'
        values: '0+1000x80'
      - series: 'vllm:request_success_total{job="autoglm-inference", instance="node3", engine="0", finished_reason="length", model_name="tiny"}'
        values: '0+90x80'
      - series: 'vllm:request_success_total{job="autoglm-inference", instance="node3", engine="0", finished_reason="stop", model_name="tiny"}'
        values: '0x80'
    promql_expr_test:
      - expr: autoglm:requests:rate5m
        eval_time: 10m
        exp_samples: [{labels: 'autoglm:requests:rate5m{instance="node3"}', value: 6}]
      - expr: round(autoglm:responses_5xx:rate5m / autoglm:responses:rate5m, 0.001)
        eval_time: 10m
        exp_samples: [{labels: '{instance="node3"}', value: 0.1}]
    alert_rule_test:
      - {alertname: AutoglmHighErrorRate, eval_time: 4m, exp_alerts: []}
      - alertname: AutoglmHighErrorRate
        eval_time: 15m
        exp_alerts:
          - exp_labels: {severity: warning, instance: node3}
            exp_annotations: {summary: node3 answers 10% of API requests with a server error}
      - {alertname: AutoglmRequestRateHigh, eval_time: 15m, exp_alerts: []}

  # The built-in server: every chat completion between 1 and 30 s, so the P95 is 28.55 s.
  - interval: 15s
    input_series:
      - series: 'autoglm_serve_request_duration_seconds_bucket{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", le="1"}'
        values: '0x80'
      - series: 'autoglm_serve_request_duration_seconds_bucket{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", le="30"}'
        values: '0+10x80'
      - series: 'autoglm_serve_request_duration_seconds_bucket{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", le="+Inf"}'
        values: '0+10x80'
      - series: 'autoglm_serve_requests_total{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", status="200"}'
        values: '0+10x80'
    promql_expr_test:
      - expr: autoglm:request_latency_seconds:p95
        eval_time: 10m
        exp_samples: [{labels: 'autoglm:request_latency_seconds:p95{instance="node1"}', value: 28.55}]
    alert_rule_test:
      - alertname: AutoglmHighP95Latency
        eval_time: 17m
        exp_alerts:
          - exp_labels: {severity: warning, instance: node1}
            exp_annotations: {summary: P95 latency on node1 is 28.55s}
      - {alertname: AutoglmHighErrorRate, eval_time: 17m, exp_alerts: []}

  # A GPU with 97.5% of its memory in use (DCGM exporter names), a failed unit, a restart loop, a weights disk
  # with 5% free and a failed weight verification.
  - interval: 15s
    input_series:
      - series: 'DCGM_FI_DEV_FB_USED{job="dcgm", instance="node2", gpu="0", UUID="GPU-1", modelName="NVIDIA H100 80GB HBM3"}'
        values: '78000x40'
      - series: 'DCGM_FI_DEV_FB_FREE{job="dcgm", instance="node2", gpu="0", UUID="GPU-1", modelName="NVIDIA H100 80GB HBM3"}'
        values: '2000x40'
      - series: 'node_systemd_unit_state{job="node", instance="node2", name="autoglm-inference@8001.service", state="failed", type="simple"}'
        values: '0x4 1x40'
      - series: 'node_systemd_service_restart_total{job="node", instance="node1", name="autoglm-inference@8000.service"}'
        values: '0+1x40'
      - series: 'node_filesystem_avail_bytes{job="node", instance="node2", mountpoint="/srv", fstype="ext4", device="/dev/md0"}'
        values: '5x60'
      - series: 'node_filesystem_size_bytes{job="node", instance="node2", mountpoint="/srv", fstype="ext4", device="/dev/md0"}'
        values: '100x60'
      - series: 'node_filesystem_avail_bytes{job="node", instance="node2", mountpoint="/run", fstype="tmpfs", device="tmpfs"}'
        values: '1x60'
      - series: 'node_filesystem_size_bytes{job="node", instance="node2", mountpoint="/run", fstype="tmpfs", device="tmpfs"}'
        values: '100x60'
      - series: 'autoglm_weights_verified{job="node", instance="node2", model="tiny", revision="2222222222222222222222222222222222222222"}'
        values: '1x4 0x40'
    alert_rule_test:
      - alertname: AutoglmGpuMemoryHigh
        eval_time: 6m
        exp_alerts:
          - exp_labels: {severity: warning, job: dcgm, instance: node2, gpu: "0", UUID: GPU-1, modelName: NVIDIA H100 80GB HBM3}
            exp_annotations: {summary: GPU 0 on node2 has 97.5% of its memory in use}
      - alertname: AutoglmServiceFailed
        eval_time: 3m
        exp_alerts:
          - exp_labels: {severity: critical, job: node, instance: node2, name: autoglm-inference@8001.service, state: failed, type: simple}
            exp_annotations:
              summary: autoglm-inference@8001.service on node2 has failed (a model that does not load, a bad configuration)
      - alertname: AutoglmRestartLoop
        eval_time: 5m
        exp_alerts:
          - exp_labels: {severity: critical, job: node, instance: node1, name: autoglm-inference@8000.service}
            exp_annotations: {summary: autoglm-inference@8000.service on node1 restarted more than 3 times in 15 minutes}
      - alertname: AutoglmWeightsDiskLow
        eval_time: 11m
        exp_alerts:
          - exp_labels: {severity: warning, job: node, instance: node2, mountpoint: /srv, fstype: ext4, device: /dev/md0}
            exp_annotations: {summary: /srv on node2 has 5% free (the next revision may not fit)}
      - alertname: AutoglmWeightsVerificationFailed
        eval_time: 2m
        exp_alerts:
          - exp_labels: {severity: critical, job: node, instance: node2, model: tiny, revision: "2222222222222222222222222222222222222222"}
            exp_annotations:
              summary: Weights tiny on node2 failed verification; the previous revision stays current

  # A healthy fleet fires nothing.
  - interval: 15s
    input_series:
      - series: 'up{job="autoglm-inference", instance="node1", backend="transformers"}'
        values: '1x80'
      - series: 'up{job="node", instance="node1"}'
        values: '1x80'
      - series: 'autoglm_serve_requests_total{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", status="200"}'
        values: '0+30x80'
      - series: 'autoglm_serve_request_duration_seconds_bucket{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", le="1"}'
        values: '0+30x80'
      - series: 'autoglm_serve_request_duration_seconds_bucket{job="autoglm-inference", instance="node1", endpoint="/v1/chat/completions", le="+Inf"}'
        values: '0+30x80'
      - series: 'DCGM_FI_DEV_FB_USED{job="dcgm", instance="node1", gpu="0"}'
        values: '40000x80'
      - series: 'DCGM_FI_DEV_FB_FREE{job="dcgm", instance="node1", gpu="0"}'
        values: '40000x80'
      - series: 'node_systemd_unit_state{job="node", instance="node1", name="autoglm-inference.service", state="failed", type="simple"}'
        values: '0x80'
      - series: 'node_systemd_service_restart_total{job="node", instance="node1", name="autoglm-inference.service"}'
        values: '1x80'
      - series: 'node_filesystem_avail_bytes{job="node", instance="node1", mountpoint="/", fstype="ext4", device="/dev/sda1"}'
        values: '60x80'
      - series: 'node_filesystem_size_bytes{job="node", instance="node1", mountpoint="/", fstype="ext4", device="/dev/sda1"}'
        values: '100x80'
      - series: 'autoglm_weights_verified{job="node", instance="node1", model="tiny", revision="2222222222222222222222222222222222222222"}'
        values: '1x80'
    alert_rule_test:
""" + "".join("      - {alertname: %s, eval_time: 20m, exp_alerts: []}\n" % name for name in (
    "AutoglmReplicaDown", "AutoglmHighErrorRate", "AutoglmHighP95Latency", "AutoglmRequestRateHigh",
    "AutoglmGpuMemoryHigh", "AutoglmServiceFailed", "AutoglmRestartLoop", "AutoglmWeightsDiskLow",
    "AutoglmWeightsVerificationFailed", "AutoglmExporterDown"))


def test_promtool_test_rules(tools, tmp_path):
    out = render(tmp_path)
    (out / "tests.yml").write_text(UNIT_TESTS)
    result = run(tools / "promtool", "test", "rules", "tests.yml", cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested():
    rules = (ROLE / "templates" / "autoglm-rules.yml.j2").read_text()
    alerts = set(re.findall(r"- alert: (\w+)", rules))
    fired = set(re.findall(r"alertname: (\w+)\n\s+eval_time: \S+\n\s+exp_alerts:\n\s+- exp_labels", UNIT_TESTS))
    assert alerts - {"AutoglmRequestRateHigh", "AutoglmExporterDown"} <= fired, alerts - fired
    assert len(alerts) == 10


def test_thresholds_come_from_the_role_variables(tools, tmp_path):
    out = render(tmp_path, monitoring_alert_error_ratio=0.2, monitoring_alert_units=["my.service", "a+b.service"],
                 monitoring_alert_weights_mountpoints=["/data/models"])
    rules = yaml.safe_load((out / "autoglm-rules.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert alerts["AutoglmHighErrorRate"]["expr"].rstrip().endswith("> 0.2")
    # Each unit and its template's instances (my@8000.service).
    assert 'name=~`my(@[^.]+)?[.]service|a\\+b(@[^.]+)?[.]service`' in alerts["AutoglmServiceFailed"]["expr"]
    assert 'mountpoint=~`/data/models`' in alerts["AutoglmWeightsDiskLow"]["expr"]
    assert run(tools / "promtool", "check", "rules", "autoglm-rules.yml", cwd=out).returncode == 0
    assert os.access(tools / "promtool", os.X_OK)
