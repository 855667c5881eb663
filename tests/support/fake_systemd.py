"""A stand-in for systemctl and journalctl (no systemd PID 1 where the tests run): the unit's state lives in a JSON
file, every call is logged, and `start` puts the unit in the state the test chose (active, failed, a crash loop).

    systemd = FakeSystemd(tmp_path)       # bin/systemctl and bin/journalctl under tmp_path
    systemd.set(on_start={"ActiveState": "failed", "Result": "exit-code"})
    env PATH=systemd.bin:$PATH ...        # then systemd.calls(): [["daemon-reload"], ["start", "demo"], ...]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

_SCRIPT = r'''#!%(python)s
import json, sys
state_file = %(state)r
with open(state_file) as f:
    state = json.load(f)
args = [a for a in sys.argv[1:] if a != "--"]
state["calls"].append([sys.argv[0].rsplit("/", 1)[-1]] + args)
out, rc = "", 0
if sys.argv[0].endswith("journalctl"):
    out = "\n".join("demo[1]: journal line %%d" %% i for i in range(1, 4)) + "\n"
else:
    verb = args[0] if args else ""
    unit = state["unit"]
    if verb == "show":
        props = dict(unit, Id="demo.service", LoadState="loaded", UnitFileState="enabled" if state["enabled"] else "disabled")
        wanted = [p for a in args if a.startswith("--property=") for p in a.split("=", 1)[1].split(",")]
        if "--value" in args:
            out = "".join("%%s\n" %% props.get(p, "") for p in wanted)
        else:
            out = "".join("%%s=%%s\n" %% (k, v) for k, v in props.items() if not wanted or k in wanted)
    elif verb == "is-enabled":
        out, rc = ("enabled\n", 0) if state["enabled"] else ("disabled\n", 1)
    elif verb == "is-active":
        out, rc = unit["ActiveState"] + "\n", 0 if unit["ActiveState"] == "active" else 3
    elif verb == "enable":
        state["enabled"] = True
    elif verb in ("start", "restart"):
        unit.update(state["on_start"])
    elif verb == "list-unit-files":
        out = "demo.service enabled enabled\n"
with open(state_file, "w") as f:
    json.dump(state, f)
sys.stdout.write(out)
sys.exit(rc)
'''

_INACTIVE = {"ActiveState": "inactive", "SubState": "dead", "Result": "success", "NRestarts": "0"}
_RUNNING = {"ActiveState": "active", "SubState": "running", "Result": "success", "NRestarts": "0"}


class FakeSystemd:
    def __init__(self, root: Path):
        self.bin = root / "fake-bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state = root / "fake-systemd.json"
        self.state.write_text(json.dumps({"unit": dict(_INACTIVE), "on_start": dict(_RUNNING), "enabled": False,
                                          "calls": []}))
        for name in ("systemctl", "journalctl"):
            path = self.bin / name
            path.write_text(_SCRIPT % {"python": sys.executable, "state": str(self.state)})
            path.chmod(0o755)

    def set(self, **changes) -> None:
        state = json.loads(self.state.read_text())
        state.update(changes)
        self.state.write_text(json.dumps(state))

    def calls(self, clear: bool = True) -> list:
        state = json.loads(self.state.read_text())
        calls = [c[1:] for c in state["calls"] if c[0] == "systemctl"]
        if clear:
            state["calls"] = []
            self.state.write_text(json.dumps(state))
        return calls

    def env(self) -> dict:
        return dict(os.environ, PATH="%s:%s" % (self.bin, os.environ.get("PATH", "")))
