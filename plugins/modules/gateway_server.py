#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gateway_server
short_description: Drain, ready or maintain one replica at the HAProxy gateway, through its runtime API
version_added: "0.5.0"
description:
  - Sets the administrative state of one server of the gateway's backend over HAProxy's admin socket
    (C(set server BACKEND/SERVER state ...)) and waits until it took effect - the rolling restart's drain and
    return (roles/inference_service, tasks/service.yml).
  - O(state=drain) stops new requests to the server, then waits until its in-flight and queued requests are done
    (C(scur) and C(qcur) both 0), so the replica can restart without failing a client request.
  - O(state=ready) gives it traffic back, then waits until HAProxy's own health check finds it up, so the next
    batch drains only once this one serves again.
  - O(state=maint) takes it out at once (health checks stop too).
  - A server the gateway does not know (a node the gateway play has not configured yet) changes nothing and is
    reported with RV(found) false and a warning.
options:
  socket:
    description: HAProxy's admin socket (C(stats socket ... level admin) in the gateway's configuration).
    type: path
    default: /run/haproxy/admin.sock
  backend:
    description: The backend holding the replicas.
    type: str
    default: replicas
  server:
    description: The server's name in that backend (the gateway role names each after its inventory host).
    type: str
    required: true
  state:
    description: The administrative state wanted.
    type: str
    choices: [ready, drain, maint]
    required: true
  wait:
    description: Wait until the state took effect (drained of requests, or up by the health check).
    type: bool
    default: true
  timeout:
    description: Seconds to wait; the module fails past them, naming what it waited for.
    type: int
    default: 300
attributes:
  check_mode:
    support: full
    description: Reports whether the state would change; sets nothing.
  diff_mode:
    support: full
    description: The server's administrative state before and after.
author:
  - autoglm.deploy maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Drain the node at the gateway before restarting it
  autoglm.deploy.gateway_server:
    server: "{{ inventory_hostname }}"
    state: drain
    timeout: 300
  delegate_to: gateway-01

- name: Give it traffic back once it passed its health gate
  autoglm.deploy.gateway_server:
    server: "{{ inventory_hostname }}"
    state: ready
  delegate_to: gateway-01
"""

RETURN = r"""
found:
  description: Whether the backend has the server.
  returned: always
  type: bool
admin_state:
  description: Its administrative state after the call (C(ready), C(drain), C(maint)), as HAProxy reports it.
  returned: when found
  type: str
status:
  description: HAProxy's status of the server after the call (e.g. C(UP), C(DOWN), C(DRAIN), C(MAINT)).
  returned: when found
  type: str
sessions:
  description: Requests in flight plus queued on the server after the call.
  returned: when found
  type: int
responses:
  description: HTTP responses the gateway passed on from the server since HAProxy started (the C(hrsp_*) counters).
  returned: when found
  type: int
errors:
  description: Of those, the 5xx ones, plus responses HAProxy could not read from the server (C(eresp)).
  returned: when found
  type: int
waited:
  description: Seconds spent waiting.
  returned: always
  type: float
"""

import socket
import time

from ansible.module_utils.basic import AnsibleModule

# srv_admin_state bits of `show servers state` (HAProxy's SRV_ADMF_*): maintenance forced, inherited, from the
# configuration or from DNS resolution; drain forced or inherited.
_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10


class GatewayError(Exception):
    pass


def ask(path: str, command: str) -> str:
    """One command over the admin socket (HAProxy answers and closes the connection)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(path)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        raise GatewayError("cannot reach the gateway's admin socket %s (%s): is HAProxy running there? Run "
                           "playbooks/deploy_gateway.yml on this host first" % (path, exc)) from exc
    return b"".join(chunks).decode("utf-8", "replace")


def server_view(path: str, backend: str, server: str) -> dict | None:
    """The server's admin state, status and sessions; None when the backend has no such server."""
    lines = ask(path, "show servers state %s" % backend).splitlines()
    header = next((line[2:].split() for line in lines if line.startswith("# be_id")), None)
    if header is None:
        raise GatewayError("the gateway has no backend %r (show servers state answered: %s)"
                           % (backend, " ".join(lines)[:200]))
    row = next((dict(zip(header, line.split())) for line in lines
                if line and not line.startswith("#") and len(line.split()) >= len(header)
                and line.split()[header.index("srv_name")] == server), None)
    if row is None:
        return None
    admin_bits = int(row["srv_admin_state"])
    admin = "maint" if admin_bits & _MAINT_BITS else "drain" if admin_bits & _DRAIN_BITS else "ready"
    stat_lines = ask(path, "show stat").splitlines()
    stat_header = stat_lines[0].lstrip("# ").split(",") if stat_lines else []
    stat = next((dict(zip(stat_header, line.split(","))) for line in stat_lines[1:]
                 if line.split(",")[:2] == [backend, server]), {})
    sessions = int(stat.get("scur") or 0) + int(stat.get("qcur") or 0)
    # Since HAProxy started: every response it passed on (hrsp_*), and those that were errors (5xx from the
    # replica, and responses it could not read: eresp).
    codes = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
    responses = sum(int(stat.get(key) or 0) for key in codes)
    errors = int(stat.get("hrsp_5xx") or 0) + int(stat.get("eresp") or 0)
    return {"admin_state": admin, "status": stat.get("status", ""), "sessions": sessions,
            "responses": responses, "errors": errors}


def settled(view: dict, state: str) -> bool:
    if state == "drain":
        return view["sessions"] == 0
    if state == "ready":
        # Exactly UP: "UP 1/2" is a server whose last check failed (on its way down), "DOWN 1/2" one on its way up.
        return view["status"] in ("UP", "no check")
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            socket=dict(type="path", default="/run/haproxy/admin.sock"),
            backend=dict(type="str", default="replicas"),
            server=dict(type="str", required=True),
            state=dict(type="str", choices=["ready", "drain", "maint"], required=True),
            wait=dict(type="bool", default=True),
            timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    path, backend, server, state = (module.params[k] for k in ("socket", "backend", "server", "state"))
    started = time.monotonic()
    found = False
    try:
        view = server_view(path, backend, server)
        if view is None:
            module.warn("the gateway's backend %s has no server %s: it sends this node no requests (run "
                        "playbooks/deploy_gateway.yml to add it)" % (backend, server))
            module.exit_json(changed=False, found=False, waited=0.0)
        found = True
        before = view["admin_state"]
        changed = before != state
        if changed and not module.check_mode:
            answer = ask(path, "set server %s/%s state %s" % (backend, server, state)).strip()
            if answer:
                raise GatewayError("HAProxy refused 'set server %s/%s state %s': %s" % (backend, server, state, answer))
        if not module.check_mode and module.params["wait"]:
            deadline = started + module.params["timeout"]
            while True:
                view = server_view(path, backend, server) or view
                if settled(view, state):
                    break
                if time.monotonic() > deadline:
                    waited_for = ("its %d requests in flight to end" % view["sessions"] if state == "drain"
                                  else "its health check to find it up (status %s)" % view["status"])
                    module.fail_json(msg="%s/%s at the gateway: waited %d s for %s. Check the replica's health "
                                         "(journalctl on the node) or raise the timeout."
                                         % (backend, server, module.params["timeout"], waited_for),
                                     found=True, waited=round(time.monotonic() - started, 1), **view)
                time.sleep(0.5)
    except GatewayError as exc:
        module.fail_json(msg=str(exc), found=found, waited=round(time.monotonic() - started, 1))
    result = dict(changed=changed, found=True, waited=round(time.monotonic() - started, 1), **view)
    if module.check_mode:
        result["admin_state"] = state
    if module._diff:
        result["diff"] = {"before": "%s/%s: %s\n" % (backend, server, before),
                          "after": "%s/%s: %s\n" % (backend, server, state)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
