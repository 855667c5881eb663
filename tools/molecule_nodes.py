"""Molecule's create and destroy for the project's systemd nodes, each one docker call per node, all at once.

    python3 molecule_nodes.py create PLATFORMS_JSON     start every node, then wait until each one's sshd answers
    python3 molecule_nodes.py destroy PLATFORMS_JSON    remove the nodes and their networks

The docker driver's own playbooks spend about 40 s of every scenario on one Ansible task per node and per
option (25 s to create three nodes, 13 s to remove them); this does the same in a few seconds. The options
are the ones the lab starts its nodes with (tools/lab.sh lab_up). A platform option this does not know is
refused, not dropped, so a scenario never runs on a node other than the one it describes.
"""
import json
import socket
import subprocess
import sys
import time

# Platform keys molecule or the inventory reads, not docker.
NOT_DOCKER = {"name", "groups", "pre_build_image", "docker_networks"}
KNOWN = NOT_DOCKER | {"image", "command", "hostname", "capabilities", "cgroupns_mode", "volumes", "tmpfs",
                      "shm_size", "security_opts", "networks"}
SSH_WAIT_S = 90


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def run_args(platform: dict) -> list:
    unknown = sorted(set(platform) - KNOWN)
    if unknown:
        sys.exit("platform %s: option(s) %s are not supported by tools/molecule_nodes.py; add them there"
                 % (platform.get("name"), ", ".join(unknown)))
    networks = platform.get("networks") or []
    if len(networks) != 1 or "ipv4_address" not in networks[0]:
        sys.exit("platform %s: give exactly one network with an ipv4_address (Ansible reaches nodes by address)"
                 % platform["name"])
    args = ["run", "-d", "--name", platform["name"], "--hostname", platform.get("hostname", platform["name"]),
            "--network", networks[0]["name"], "--ip", networks[0]["ipv4_address"], "--label", "owner=molecule"]
    for capability in platform.get("capabilities", []):
        args += ["--cap-add", capability]
    if "cgroupns_mode" in platform:
        args += ["--cgroupns", platform["cgroupns_mode"]]
    if "shm_size" in platform:
        args += ["--shm-size", str(platform["shm_size"])]
    for volume in platform.get("volumes", []):
        args += ["-v", volume]
    for mount in platform.get("tmpfs", []):
        args += ["--tmpfs", mount]
    for option in platform.get("security_opts", []):
        args += ["--security-opt", option]
    args.append(platform["image"])
    command = platform.get("command")
    return args + (command.split() if isinstance(command, str) else list(command or []))


def networks_of(platforms: list) -> dict:
    return {net["name"]: net["ipam_config"][0]["subnet"] for platform in platforms
            for net in platform.get("docker_networks", [])}


def sshd_answers(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=3) as conn:
            conn.settimeout(3)
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False


def create(platforms: list) -> None:
    for name, subnet in networks_of(platforms).items():
        if docker("network", "inspect", name, check=False).returncode != 0:
            docker("network", "create", "--subnet", subnet, name)
    names = [platform["name"] for platform in platforms]
    docker("rm", "-f", *names, check=False)
    starts = [(platform["name"], subprocess.Popen(["docker", *run_args(platform)], stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE, text=True)) for platform in platforms]
    failed = ["%s: %s" % (name, start.communicate()[1].strip()) for name, start in starts if start.wait() != 0]
    if failed:
        sys.exit("docker run failed:\n" + "\n".join(failed))
    # A new node makes its SSH host keys at first boot; the converge after this reaches it over SSH.
    deadline = time.monotonic() + SSH_WAIT_S
    waiting = {platform["name"]: platform["networks"][0]["ipv4_address"] for platform in platforms}
    while waiting and time.monotonic() < deadline:
        waiting = {name: address for name, address in waiting.items() if not sshd_answers(address)}
        if waiting:
            time.sleep(0.5)
    if waiting:
        sys.exit("sshd did not answer within %d s on %s; see: docker exec NODE journalctl -u ssh"
                 % (SSH_WAIT_S, ", ".join("%s (%s)" % item for item in waiting.items())))
    print(json.dumps({"created": names}))


def destroy(platforms: list) -> None:
    docker("rm", "-f", *[platform["name"] for platform in platforms], check=False)
    for name in networks_of(platforms):
        # Still in use by nodes of another run: left for that run.
        docker("network", "rm", name, check=False)
    print(json.dumps({"destroyed": [platform["name"] for platform in platforms]}))


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("create", "destroy"):
        sys.exit(__doc__)
    platforms = json.loads(sys.argv[2])
    (create if sys.argv[1] == "create" else destroy)(platforms)


if __name__ == "__main__":
    main()
