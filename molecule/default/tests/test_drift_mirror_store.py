"""After drifts/mirror_store_corrupted.yml and the one rerun of site.yml: the mirror's store holds the right bytes
again, in its own inode (never the seed's), and in between the mirror answered no complete body of the bad file."""
from __future__ import annotations

import json
import re

testinfra_hosts = ["mirror1"]

DATA = "/srv/autoglm-mirror"
REPO = "autoglm-lab/tiny-autoglm-phone"
SEED = "/srv/models/tiny"
OBSERVED = "/var/tmp/autoglm-drift-mirror-store.json"  # written by the drift play

# Runs on the node: GET the file from the mirror over https and print status, length and sha256.
FETCH = r"""
import hashlib, json, ssl, sys, urllib.request
context = ssl.create_default_context(cafile="/etc/autoglm-mirror/tls/ca.pem")
context.check_hostname = False
with urllib.request.urlopen("https://127.0.0.1:8090" + sys.argv[1], timeout=60, context=context) as resp:
    body = resp.read()
print(json.dumps({"status": resp.status, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}))
"""


def observed(host) -> dict:
    return json.loads(host.file(OBSERVED).content_string)


def store_file(seen: dict) -> str:
    return "%s/repos/%s/snapshots/%s/%s" % (DATA, REPO, seen["commit"], seen["path"])


def test_the_mirror_cut_the_bad_file_short_then_refused_it(host):
    seen = observed(host)
    assert seen["first"]["status"] == 200 and seen["first"]["received"] < seen["first"]["content_length"] == seen["size"]
    assert seen["second"]["status"] == 503


def test_the_store_file_has_the_right_bytes_again(host):
    seen = observed(host)
    stored = host.file(store_file(seen))
    assert stored.sha256sum == seen["sha256"]
    assert stored.inode != seen["inode"]  # replaced, so the server no longer refuses it (a new identity)
    aside = host.run("find %s/quarantine/%s/%s -type f", DATA, REPO, seen["commit"]).stdout.split()
    assert len(aside) == 1 and aside[0].rsplit("/", 1)[-1].startswith(seen["path"].rsplit("/", 1)[-1] + ".")


def test_the_seed_was_not_hit(host):
    seen = observed(host)
    seed = host.file("%s/%s/%s" % (SEED, seen["commit"], seen["path"]))
    stored = host.file(store_file(seen))
    assert seed.sha256sum == seen["sha256"]
    assert (seed.inode, host.run("stat -c %%d %s", seed.path).stdout) != (
        stored.inode, host.run("stat -c %%d %s", stored.path).stdout)
    assert host.run("stat -c %%h %s", stored.path).stdout.strip() == "1"  # no hard link left
    assert host.run("find %s -path '*/.autoglm/quarantine/*' -type f", SEED).stdout.split() == []


def test_no_complete_bad_body_was_answered(host):
    seen = observed(host)
    journal = host.run("journalctl -u autoglm-mirror --no-pager -o cat --since %s", seen["since"]).stdout
    assert "QUARANTINED %s@%s/%s" % (REPO, seen["commit"], seen["path"]) in journal
    quoted = re.escape(seen["path"])
    served = [(int(status), int(sent)) for status, sent in
              re.findall(r'"GET /%s/resolve/[^ ]+/%s" (\d+) (\d+)' % (re.escape(REPO), quoted), journal)]
    assert served, journal[-2000:]
    assert all(sent < seen["size"] for status, sent in served if status == 200), served
    assert not [1 for status, _sent in served if status == 206], served  # nobody asked for parts; none of bad bytes


def test_the_mirror_serves_the_repaired_file(host):
    seen = observed(host)
    # Through the ModelScope path, so the resolve lines test_no_complete_bad_body_was_answered reads stay the drift's.
    cmd = host.run("python3 -c %s %s", FETCH, "/api/v1/models/%s/repo?Revision=%s&FilePath=%s"
                   % (REPO, seen["commit"], seen["path"]))
    assert cmd.rc == 0, cmd.stderr
    got = json.loads(cmd.stdout)
    assert got == {"status": 200, "length": seen["size"], "sha256": seen["sha256"]}
