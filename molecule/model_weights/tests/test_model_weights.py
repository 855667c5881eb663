"""State after converge and the drift repair: per-commit folders, verified current links, quarantine, upstream bytes.

The hub stands in for upstream (tag v1 = 1111..., branch main = 2222...); role-mirror1 is the seed and mirror.
"""
from __future__ import annotations

import json
import os
import re

import pytest

V1, V2 = "1" * 40, "2" * 40
ROOT = "/srv/models/tiny"
SHARD = "model-00002-of-00003.safetensors"
GPU_NODES = ("role-node1", "role-node2", "role-node3")
LINE = re.compile(r'^\S+ "(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) (?P<bytes>\d+)$')


def name(host):
    return host.backend.get_hostname()


def other(host, hostname):
    return host.get_host("ansible://%s" % hostname, ansible_inventory=host.backend.ansible_inventory)


def sha256s(host, folder):
    """Relative path -> sha256 of every file below folder, outside .autoglm/."""
    out = host.check_output("cd %s && find . -path ./.autoglm -prune -o -type f -print0 | sort -z | xargs -0 sha256sum",
                            folder)
    return {path[2:]: digest for digest, path in (line.split(None, 1) for line in out.splitlines())}


def manifest(host, folder):
    return json.loads(host.file(folder + "/.autoglm/manifest.json").content_string)


def hub_lines(host, after: str, until: str | None):
    """Access-log lines of the hub between two marks written by mark_hub_log.yml."""
    hub = other(host, "role-hub")
    cursors = {m: hub.file("/var/lib/hub-mark-%s.cursor" % m).content_string.strip() for m in (after, until) if m}
    cmd = "journalctl -u autoglm-mirror -o cat --no-pager"
    if cursors[after]:
        cmd += " --after-cursor '%s'" % cursors[after]
    lines = hub.check_output(cmd).splitlines()
    if until:
        stop = hub.check_output("journalctl -u autoglm-mirror -o cat --no-pager --after-cursor '%s'" % cursors[until])
        lines = lines[:len(lines) - len(stop.splitlines())] if stop else lines
    return [m.groupdict() for m in map(LINE.match, lines) if m]


def served(lines):
    files = sum(int(item["bytes"]) for item in lines if "/resolve/" in item["path"])
    listings = [item for item in lines if item["path"].startswith("/api/")]
    return files, sum(int(item["bytes"]) for item in lines), len(listings)


@pytest.fixture(scope="module")
def model_size(host):
    return sum(int(s) for s in other(host, "role-hub").check_output(
        "find /srv/incoming/v2 -type f -printf '%s\\n'").split())


@pytest.fixture(scope="module")
def changed_since_v1(host):
    """v2's files whose bytes differ from v1's: all a node already running v1 needs to download."""
    hub = other(host, "role-hub")
    old, new = sha256s(hub, "/srv/incoming/v1"), sha256s(hub, "/srv/incoming/v2")
    return {path: hub.file("/srv/incoming/v2/" + path).size for path, digest in new.items() if old.get(path) != digest}


def test_current_points_at_the_new_revision(host):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream, it holds no deployment")
    link = host.file(ROOT + "/current")
    assert link.is_symlink and link.linked_to == "%s/%s" % (ROOT, V2)
    assert host.file(ROOT + "/current").user == "root"
    folder = host.file("%s/%s" % (ROOT, V2))
    assert folder.user == "root" and folder.mode == 0o755


def test_every_file_and_folder_of_current_is_root_owned_and_world_readable(host):
    """role-node2's shard made 0600 and config.json given to nobody (side_effect) are back to the role's modes."""
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream, it holds no deployment")
    listing = host.check_output("find -L %s/current \\( -type f -printf 'f %%m %%u:%%g %%P\\n' \\) -o "
                                "\\( -type d -printf 'd %%m %%u:%%g %%P\\n' \\)", ROOT)
    wrong = [line for line in listing.splitlines()
             if not (line.startswith("f 644 root:root ") or line.startswith("d 755 root:root "))]
    assert wrong == []


def test_previous_revision_is_kept_once(host):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    entries = sorted(host.check_output("ls -A %s", ROOT).split())
    assert entries == sorted([V1, V2, "current"])


def test_current_holds_exactly_the_hubs_files(host):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    expected = sha256s(other(host, "role-hub"), "/srv/incoming/v2")
    assert sha256s(host, ROOT + "/current/") == expected
    recorded = manifest(host, ROOT + "/" + V2)
    assert recorded["commit"] == V2 and recorded["repo_id"] == "test-org/tiny"
    assert {f["path"]: f["sha256"] for f in recorded["files"]} == expected
    for path in expected:
        assert host.file("%s/%s/%s" % (ROOT, V2, path)).mode == 0o644


def test_files_v1_already_had_were_linked_not_downloaded(host, changed_since_v1):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    same = sorted(set(sha256s(host, "%s/%s" % (ROOT, V2))) - set(changed_since_v1))
    assert same and len(changed_since_v1) >= 3, "the two revisions should share some files and differ in others"
    for path in same:
        inodes = {host.check_output("stat -c %%i %s", "%s/%s/%s" % (ROOT, commit, path)) for commit in (V1, V2)}
        assert len(inodes) == 1, path


def test_nodes_fetched_from_the_mirror_and_the_seed_from_upstream(host):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    endpoints = {f["endpoint"] for f in manifest(host, ROOT + "/" + V2)["files"]}
    assert endpoints == ({"http://role-hub:8090"} if name(host) == "role-mirror1" else {"http://role-mirror1:8090"})


def test_mirror_serves_the_published_revision(host):
    if name(host) != "role-mirror1":
        pytest.skip("role-mirror1 is the mirror")
    refs = json.loads(host.file("/srv/autoglm-mirror/repos/test-org/tiny/refs.json").content_string)
    assert refs["branches"]["main"] == V2 and refs["branches"]["v1"] == V1
    # Published as a copy of its own (one inode for both let one corruption hit the seed and the mirror), with the
    # same bytes, and none of the seed's .autoglm state.
    weights = "%s/%s/%s" % (ROOT, V2, SHARD)
    published = "/srv/autoglm-mirror/repos/test-org/tiny/snapshots/%s/%s" % (V2, SHARD)
    assert host.check_output("stat -c %%i %s", weights) != host.check_output("stat -c %%i %s", published)
    assert host.file(weights).sha256sum == host.file(published).sha256sum
    assert not host.file("/srv/autoglm-mirror/repos/test-org/tiny/snapshots/%s/.autoglm" % V2).exists


def test_corrupted_shard_was_quarantined_and_only_it_refetched(host):
    if name(host) not in GPU_NODES:
        pytest.skip("drift was made on GPU nodes")
    folder = "%s/%s" % (ROOT, V2)
    quarantined = host.check_output("find %s/.autoglm/quarantine -type f -printf '%%P\\n' 2>/dev/null || true", folder)
    fetched_at = {f["path"]: f["fetched_at"] for f in manifest(host, folder)["files"]}
    if name(host) != "role-node2":
        assert quarantined == ""
        assert len(set(fetched_at.values())) == 1  # one download, nothing fetched again
        return
    assert [line.split("/", 1)[1] for line in quarantined.splitlines()] == [SHARD]
    bad = host.check_output("sha256sum %s/.autoglm/quarantine/%s", folder, quarantined.strip()).split()[0]
    good = sha256s(other(host, "role-hub"), "/srv/incoming/v2")[SHARD]
    assert bad != good
    assert max(fetched_at, key=fetched_at.get) == SHARD and len(set(fetched_at.values())) == 2
    status = json.loads(host.file(folder + "/.autoglm/fetch-status.json").content_string)
    size = host.file("%s/%s" % (folder, SHARD)).size
    assert status["state"] == "done" and status["files_total"] == 1
    assert size <= status["bytes_fetched"] <= size + 4096


def test_current_only_ever_held_verified_weights(host):
    """model_verify's cache vouches for the exact files in place (same inode, same hash) in the current revision."""
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    folder = "%s/%s" % (ROOT, V2)
    cache = json.loads(host.file(folder + "/.autoglm/verify-cache.json").content_string)["files"]
    on_disk = sha256s(host, folder)
    assert set(cache) == set(on_disk)
    for path, digest in on_disk.items():
        inode = int(host.check_output("stat -c %%i %s", "%s/%s" % (folder, path)))
        assert cache[path]["sha256"] == digest and cache[path]["inode"] == inode, path


def test_upstream_served_the_model_once_for_the_fleet_and_once_for_one_node(host, model_size, changed_since_v1):
    if name(host) != "role-hub":
        pytest.skip("counted on the hub")
    fleet_files, fleet_all, fleet_listings = served(hub_lines(host, "prepared", "converged"))
    repair_files, _unused, _unused = served(hub_lines(host, "converged", "repaired"))
    solo_files, solo_all, solo_listings = served(hub_lines(host, "repaired", "solo"))
    report = {"model_bytes": model_size, "changed_since_v1_bytes": sum(changed_since_v1.values()),
              "fleet_3_nodes": {"file_bytes": fleet_files, "all_bytes": fleet_all, "listing_requests": fleet_listings},
              "one_node_no_mirror": {"file_bytes": solo_files, "all_bytes": solo_all, "listing_requests": solo_listings},
              "repair_file_bytes": repair_files}
    out = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), ".cache", "model_weights-upstream-bytes.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    # The seed alone, once, and only what v1 lacked: the nodes fetched from role-mirror1, the rest was linked.
    assert fleet_files == sum(changed_since_v1.values())
    assert solo_files == model_size
    assert repair_files == 0  # role-node2's shard came from the mirror


SEALED, ALTERED = "3" * 40, "4" * 40
SEALED_ROOT = "/srv/models/tiny-sealed"


def test_the_sealed_model_reached_the_seed_and_every_node_decrypted_and_verified(host):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    assert host.file(SEALED_ROOT + "/current").linked_to == "%s/%s" % (SEALED_ROOT, SEALED)
    plaintext = sha256s(host, SEALED_ROOT + "/current")
    # v2's own bytes, plus the checksums file the package carried (and that vouched for them).
    assert plaintext.pop("SHA256SUMS") and plaintext == sha256s(other(host, "role-hub"), "/srv/incoming/v2")
    recorded = manifest(host, "%s/%s" % (SEALED_ROOT, SEALED))
    assert recorded["commit"] == SEALED and {f["path"] for f in recorded["files"]} == set(plaintext) | {"SHA256SUMS"}
    cache = json.loads(host.file("%s/%s/.autoglm/verify-cache.json" % (SEALED_ROOT, SEALED)).content_string)["files"]
    assert set(cache) == set(plaintext) | {"SHA256SUMS"}


def test_the_package_is_kept_on_the_seed_only_and_the_mirror_serves_it_not_the_plaintext(host):
    if name(host) == "role-hub":
        pytest.skip("the hub is upstream")
    package = "%s/.sealed/%s" % (SEALED_ROOT, SEALED)
    assert host.file(package).exists == (name(host) == "role-mirror1")
    if name(host) != "role-mirror1":
        assert {f["endpoint"] for f in manifest(host, "%s/%s" % (SEALED_ROOT, SEALED))["files"]} == {
            "http://role-mirror1:8090"}
        return
    published = "/srv/autoglm-mirror/repos/test-org/tiny-sealed/snapshots/" + SEALED
    assert host.check_output("find %s -type f -printf '%%P\\n'", published) == "tiny.tar.age"
    assert host.file(published + "/tiny.tar.age").sha256sum == host.file(package + "/tiny.tar.age").sha256sum


def test_a_wrong_key_and_an_altered_package_promoted_nothing(host):
    if name(host) != "role-node1":
        pytest.skip("refused on role-node1")
    folder = "/srv/models-refused/tiny-sealed"
    entries = host.check_output("find %s -mindepth 1 -maxdepth 1 -printf '%%f\\n'", folder).split()
    # No revision, no current, no staging left; only the packages, kept so that the next run resumes their download.
    assert not [e for e in entries if e in ("current", SEALED, ALTERED) or e.startswith(".unseal-")], entries
    assert sorted(host.check_output("ls %s/.sealed", folder).split()) == [SEALED, ALTERED]
