"""State after the monitoring scenario: Prometheus and Alertmanager on mon-node1 and node exporters on both
nodes, each in the collection's sandboxed unit; every target up, the fleet's rules loaded and reading the
recorded vLLM replica; a stopped replica's alert reached the webhook and resolved (side_effect.yml)."""
from __future__ import annotations

import json
import re

import pytest

# Runs on the node with its python3 (no curl there): GET a URL (argv[1] + the quoted argv[2]), print the answer.
GET = ("import sys, urllib.parse, urllib.request; "
       "print(urllib.request.urlopen(sys.argv[1] + urllib.parse.quote(sys.argv[2]), timeout=10).read().decode())")


def on(host, name):
    if host.backend.get_hostname() != name:
        pytest.skip("checked on %s" % name)


def get(host, url, argument=""):
    return json.loads(host.check_output("python3 -c %s %s %s", GET, url, argument))


def query(host, expr):
    return get(host, "http://127.0.0.1:9090/api/v1/query?query=", expr)["data"]["result"]


@pytest.mark.parametrize("unit", ["prometheus", "prometheus-alertmanager", "prometheus-node-exporter"])
def test_the_services_run_in_the_collections_units(host, unit):
    if unit != "prometheus-node-exporter":
        on(host, "mon-node1")
    service = host.service(unit)
    assert service.is_running and service.is_enabled
    fragment = host.check_output("systemctl show -p FragmentPath --value %s", unit)
    assert fragment == "/etc/systemd/system/%s.service" % unit
    assert "autoglm.deploy" in host.file(fragment).content_string
    # "→ Overall exposure level for prometheus.service: 1.6 OK 🙂"
    summary = host.check_output("systemd-analyze security --no-pager %s.service | tail -n 1", unit)
    assert float(re.search(r": (\d+\.\d+) ", summary).group(1)) <= 2.0, summary


def test_every_target_is_up(host):
    on(host, "mon-node1")
    targets = get(host, "http://127.0.0.1:9090/api/v1/targets?state=active")["data"]["activeTargets"]
    seen = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
    assert seen == {("prometheus", "mon-node1"): "up", ("alertmanager", "mon-node1"): "up",
                    ("node", "mon-node1"): "up", ("node", "mon-node2"): "up",
                    ("autoglm-inference", "mon-node2"): "up"}, seen


def test_the_fleet_rules_are_loaded_and_read_the_replica(host):
    on(host, "mon-node1")
    groups = get(host, "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} == {"autoglm-recording", "autoglm-alerts"}
    assert all(rule["health"] == "ok" for g in groups for rule in g["rules"])
    # The recorded vLLM counters do not move, so the rates are 0, but the series exist under the fleet's names.
    for expr in ("autoglm:requests:rate5m", "autoglm:generation_tokens:rate5m", "autoglm:responses:rate5m"):
        assert [r["metric"].get("instance") for r in query(host, expr)] == ["mon-node2"], expr


def test_the_node_exporters_report_the_fleets_units(host):
    on(host, "mon-node1")
    # By inventory name: Debian's package starts Prometheus with its own example configuration before the role
    # replaces it, and the series it scraped then (instance="localhost:9100") stay queryable for five minutes.
    states = query(host, 'node_systemd_unit_state{instance=~"mon-.*", name="prometheus.service", state="active"}')
    assert [(r["metric"]["instance"], r["value"][1]) for r in states] == [("mon-node1", "1")]
    filesystems = query(host, 'node_filesystem_avail_bytes{instance=~"mon-.*"}')
    assert {r["metric"]["instance"] for r in filesystems} == {"mon-node1", "mon-node2"}


def test_a_stopped_replica_fired_its_alert_at_the_webhook_and_resolved(host):
    on(host, "mon-node2")
    posts = [json.loads(line) for line in host.file("/var/tmp/webhook.jsonl").content_string.splitlines()]
    down = [(post["status"], alert["status"]) for post in posts for alert in post["alerts"]
            if alert["labels"]["alertname"] == "AutoglmReplicaDown" and alert["labels"]["instance"] == "mon-node2"]
    assert ("firing", "firing") in down and ("resolved", "resolved") in down, posts
    assert all(alert["labels"]["alertname"] == "AutoglmReplicaDown" for post in posts for alert in post["alerts"])


def test_grafana_gets_the_dashboard_and_its_provisioning(host):
    on(host, "mon-node1")
    dashboard = json.loads(host.file("/etc/autoglm/grafana/dashboards/autoglm-fleet.json").content_string)
    assert dashboard["uid"] == "autoglm-fleet"
    datasource = host.file("/etc/autoglm/grafana/provisioning/datasources/autoglm.yml").content_string
    assert ":9090" in datasource and "type: prometheus" in datasource
    assert "/etc/autoglm/grafana/dashboards" in host.file("/etc/autoglm/grafana/provisioning/dashboards/autoglm.yml").content_string
