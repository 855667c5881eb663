"""Role model_weights on localhost against the project's mirror on loopback.

Argument specs refuse bad input before any task; check mode writes nothing; a rerun is changed=0 with one
metadata request (none when the commit is pinned); a revision change keeps the old one, keep=0 prunes it;
a shard corrupted in place (same size and mtime) is quarantined and refetched alone; a disk that is too
small is refused before downloading, naming the host and the numbers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from support.hostile_hub import HostileHub, hf_listing, make_ca
from support.mirror import DEV_COMMIT, TINY_COMMIT, TINY_REPO
from support.playbook import run_local_playbook

REPO = Path(__file__).resolve().parents[2]


def run_role(tmp_path: Path, root: Path, endpoint: str, *extra: str, check: bool = False) -> tuple:
    """Apply the role once; returns (returncode, stats of localhost, the json callback's report)."""
    playbook = tmp_path / "play.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [autoglm.deploy.model_weights]\n")
    settings = {"model_weights_root": str(root), "model_weights_name": "tiny", "model_weights_repo_id": TINY_REPO,
                "model_weights_endpoints": [endpoint], "model_weights_allow_unsigned": True,
                "model_weights_poll_interval": 1, "model_weights_disk_headroom_mb": 1}
    rc, report, raw = run_local_playbook(playbook, tmp_path, (json.dumps(settings), *extra), check=check)
    report = report or {"stats": {}, "plays": [], "raw": raw}
    return rc, report["stats"].get("localhost", {}), report


def failures(report: dict) -> list:
    return [result.get("msg", "") for play in report.get("plays", []) for task in play["tasks"]
            for result in task["hosts"].values() if result.get("failed") and not result.get("ignore_errors")]


def requests(server, since: int = 0) -> list:
    """(path, bytes) of the requests in the server's access log, after the first `since` ones."""
    out = []
    for line in server.log().splitlines():
        parts = line.split('"')
        if len(parts) == 3 and " " in parts[1]:
            out.append((parts[1].split()[1], int(parts[2].split()[-1])))
    return out[since:]


def test_bad_input_is_refused_before_any_task(tmp_path):
    code, _unused, report = run_role(tmp_path, tmp_path / "models", "http://127.0.0.1:9", "model_weights_source=github",
                                     "model_weights_keep=lots")
    text = json.dumps(report)
    assert code != 0 and "model_weights_source" in text and "github" in text and "model_weights_keep" in text
    assert not (tmp_path / "models").exists()


def test_check_mode_writes_nothing_then_converges_then_reruns_as_a_noop(tmp_path, mirror_factory):
    server = mirror_factory()
    root = tmp_path / "models"
    code, stats, report = run_role(tmp_path, root, server.url, check=True)
    assert code == 0, failures(report)
    assert stats["changed"] > 0 and not root.exists()

    code, stats, report = run_role(tmp_path, root, server.url)
    assert code == 0, failures(report)
    assert os.readlink(root / "tiny" / "current") == TINY_COMMIT
    manifest = json.loads((root / "tiny" / TINY_COMMIT / ".autoglm" / "manifest.json").read_text())
    assert manifest["commit"] == TINY_COMMIT

    seen = len(requests(server))
    code, stats, report = run_role(tmp_path, root, server.url)
    assert code == 0 and stats["changed"] == 0, failures(report)
    assert [path for path, _unused in requests(server, seen)] == ["/api/models/%s/revision/main" % TINY_REPO]

    seen = len(requests(server))
    code, stats, _unused = run_role(tmp_path, root, server.url, "model_weights_commit=" + TINY_COMMIT)
    assert code == 0 and stats["changed"] == 0
    assert requests(server, seen) == []  # pinned and on disk: not a single request


def test_revision_change_keeps_the_previous_one_and_keep_zero_prunes_it(tmp_path, mirror_factory):
    server = mirror_factory()
    root = tmp_path / "models"
    assert run_role(tmp_path, root, server.url)[0] == 0
    code, stats, report = run_role(tmp_path, root, server.url, "model_weights_revision=dev")
    assert code == 0, failures(report)
    assert os.readlink(root / "tiny" / "current") == DEV_COMMIT
    assert sorted(os.listdir(root / "tiny")) == sorted([TINY_COMMIT, DEV_COMMIT, "current"])
    code, stats, report = run_role(tmp_path, root, server.url, "model_weights_revision=dev", "model_weights_keep=0")
    assert code == 0 and stats["changed"] == 1, failures(report)
    assert sorted(os.listdir(root / "tiny")) == sorted([DEV_COMMIT, "current"])


def test_a_shard_corrupted_in_place_is_quarantined_and_refetched_alone(tmp_path, mirror_factory):
    server = mirror_factory()
    root = tmp_path / "models"
    assert run_role(tmp_path, root, server.url)[0] == 0
    folder = root / "tiny" / TINY_COMMIT
    shard = sorted(folder.glob("*.safetensors"))[1]
    st = shard.stat()
    with open(shard, "r+b") as handle:
        handle.seek(st.st_size // 2)
        handle.write(b"\xff" * 16)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))

    seen = len(requests(server))
    code, _unused, report = run_role(tmp_path, root, server.url)
    assert code == 0, failures(report)
    downloads = [(path, size) for path, size in requests(server, seen) if "/resolve/" in path]
    assert downloads == [("/%s/resolve/%s/%s" % (TINY_REPO, TINY_COMMIT, shard.name), st.st_size)]
    assert [p.name for p in (folder / ".autoglm" / "quarantine").rglob("*.safetensors")] == [shard.name]
    assert os.readlink(root / "tiny" / "current") == TINY_COMMIT
    assert run_role(tmp_path, root, server.url)[1]["changed"] == 0


def test_the_verification_result_reaches_the_node_exporters_textfile_folder(tmp_path, mirror_factory):
    """autoglm_weights_verified 1 after a verified run (a rerun leaves the file alone); 0 when a revision that
    fails verification cannot be repaired (its endpoint is gone), and the play fails with current unchanged."""
    server = mirror_factory()
    root, metrics = tmp_path / "models", tmp_path / "textfile"
    metrics.mkdir()
    prom = metrics / "autoglm_weights_tiny.prom"
    code, _unused, report = run_role(tmp_path, root, server.url, "model_weights_metrics_dir=%s" % metrics)
    assert code == 0, failures(report)
    assert prom.read_text().splitlines()[-1] == 'autoglm_weights_verified{model="tiny",revision="%s"} 1' % TINY_COMMIT
    code, stats, _unused = run_role(tmp_path, root, server.url, "model_weights_metrics_dir=%s" % metrics)
    assert code == 0 and stats["changed"] == 0

    shard = sorted((root / "tiny" / TINY_COMMIT).glob("*.safetensors"))[0]
    shard.write_bytes(b"\0" * shard.stat().st_size)
    code, _unused, report = run_role(tmp_path, root, "http://127.0.0.1:9", "model_weights_metrics_dir=%s" % metrics,
                                     "model_weights_commit=" + TINY_COMMIT)
    assert code != 0
    assert prom.read_text().splitlines()[-1] == 'autoglm_weights_verified{model="tiny",revision="%s"} 0' % TINY_COMMIT
    assert any("127.0.0.1:9" in message or "verif" in message for message in failures(report)), failures(report)
    assert os.readlink(root / "tiny" / "current") == TINY_COMMIT


def test_a_disk_too_small_is_refused_before_downloading(tmp_path, mirror_factory):
    server = mirror_factory()
    code, _unused, report = run_role(tmp_path, tmp_path / "models", server.url, "model_weights_disk_headroom_mb=1000000000")
    message = " ".join(failures(report))
    assert code != 0 and "localhost:" in message and "bytes are free" in message and "MiB headroom" in message
    assert not [path for path, _unused in requests(server) if "/resolve/" in path]


def test_the_mirror_gets_its_own_token_and_the_hub_its_own_over_verified_https(tmp_path):
    # The mirror (plain http, a lab) answers 503, so the hub (https, a CA of the test's own) serves the model.
    files = {"config.json": b'{"model_type": "tiny"}\n', "weights.bin": os.urandom(200_000)}
    ca = make_ca(tmp_path / "ca", ["localhost", "IP:127.0.0.1"])
    with HostileHub() as mirror, HostileHub(files=files, tls=ca) as hub:
        for rev in ("main", TINY_COMMIT):
            mirror.routes["/api/models/%s/revision/%s" % (TINY_REPO, rev)] = (503, {}, b"down")
        hub.listing = hf_listing(files, TINY_COMMIT)
        secrets = {"model_weights_mirror_url": mirror.url, "model_weights_mirror_token": "mirror-secret-1",
                   "model_weights_token": "hub-secret-2", "model_weights_ca_bundle": ca["ca"],
                   "model_weights_fetch_timeout": 120}
        refused = run_role(tmp_path, tmp_path / "models", hub.url, json.dumps(secrets))
        assert refused[0] != 0 and "model_weights_mirror_allow_insecure_token" in " ".join(failures(refused[2]))
        assert mirror.requests == [] and hub.requests == []
        allowed = json.dumps(dict(secrets, model_weights_mirror_allow_insecure_token=True))
        code, _unused, report = run_role(tmp_path, tmp_path / "models", hub.url, allowed)
        assert code == 0, failures(report)
        assert mirror.auth_seen() == {"Bearer mirror-secret-1"}
        assert hub.auth_seen() == {"Bearer hub-secret-2"}
        assert "mirror-secret-1" not in json.dumps(report) and "hub-secret-2" not in json.dumps(report)
    folder = tmp_path / "models" / "tiny" / TINY_COMMIT
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == files
