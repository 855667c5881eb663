"""After the drift rerun: node1's weights are readable by the service user again (molecule/default/drifts/weights_unreadable.yml)."""
from __future__ import annotations

testinfra_hosts = ["node1"]
WEIGHTS = "/srv/models/tiny"
SERVICE_USER = "autoglm-inference"


def test_every_file_and_folder_of_the_revision_is_root_owned_with_the_role_modes(host):
    listing = host.run("find -L %s/current \\( -type f -printf 'f %%m %%u:%%g %%p\\n' \\) -o "
                       "\\( -type d -printf 'd %%m %%u:%%g %%p\\n' \\)", WEIGHTS)
    assert listing.rc == 0, listing.stderr
    wrong = [line for line in listing.stdout.splitlines()
             if not (line.startswith("f 644 root:root ") or line.startswith("d 755 root:root "))]
    assert wrong == []


def test_the_service_user_reads_the_shards_and_config(host):
    cmd = host.run("runuser -u %s -- sh -c 'cat %s/current/config.json %s/current/model-*.safetensors > /dev/null'",
                   SERVICE_USER, WEIGHTS, WEIGHTS)
    assert cmd.rc == 0, cmd.stderr
