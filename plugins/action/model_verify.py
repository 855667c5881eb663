# SPDX-License-Identifier: Apache-2.0
"""Action for model_verify: hash on the node, check the signature on the controller.

The node runs the model_verify module (standard library only), which returns the hash of
every file it checked and the content of the signature file. The signature is verified here,
where `cryptography` is available, and bound to those hashes: every signed digest must equal
the node's, and every file on the node must be signed (or under a path the signed statement
itself ignores). A problem with the key or with missing signature settings is reported before
anything runs on the node.
"""
from __future__ import annotations

import base64

from ansible.errors import AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.autoglm.deploy.plugins.plugin_utils import _model_signing

MODULE = "autoglm.deploy.model_verify"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        allow_unsigned = boolean(args.get("allow_unsigned", False), strict=False)
        public_key = args.get("public_key")
        key = None
        if public_key:
            try:
                key_path = self._find_needle("files", public_key)
                with open(key_path, "rb") as handle:
                    key = _model_signing.load_public_key(handle.read(), "public_key %s" % key_path)
            except (AnsibleError, OSError, _model_signing.SignatureError) as exc:
                result.update(failed=True, msg="cannot use public_key %s: %s" % (public_key, exc))
                return result
        elif not allow_unsigned:
            result.update(failed=True, msg="model_verify needs public_key (the PEM key the model's signature must "
                                           "verify with), or allow_unsigned: true to accept the model unsigned")
            return result

        outcome = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        signature = outcome.get("signature") or {}
        content = signature.pop("content_b64", None)
        result.update(outcome)
        if outcome.get("failed"):
            return result

        path = signature.get("path")
        if key is None:
            result["signature"] = {"status": "not_checked", "path": path, "signed_files": 0}
            return result
        if content is None:
            if signature.get("explicit") or not allow_unsigned:
                result.update(failed=True, msg="no signature at %s on the node (allow_unsigned: true accepts an "
                                               "unsigned model)" % path)
            result["signature"] = {"status": "unsigned", "path": path, "signed_files": 0}
            return result
        try:
            signed = _model_signing.verify_bundle(base64.b64decode(content), key)
        except _model_signing.SignatureError as exc:
            result.update(failed=True, msg="signature %s rejected: %s" % (path, exc),
                          signature={"status": "invalid", "path": path, "signed_files": 0})
            return result
        problems = _model_signing.bind(signed, outcome.get("files") or {})
        result["signature"] = {"status": "verified" if not problems else "mismatch", "path": path,
                               "signed_files": len(signed["resources"])}
        if problems:
            result.update(failed=True, signature_problems=problems,
                          msg="signature %s is valid but does not match the model on the node (%d problem(s)):\n%s"
                              % (path, len(problems), "\n".join(problems)))
        return result
