# SPDX-License-Identifier: Apache-2.0
"""Where pip gets packages: the options every pip-driving module takes (their values go to _pip.source_args)."""
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  index_url:
    description: Base URL of the package index (pip C(--index-url)); pip's own configuration when unset.
    type: str
  extra_index_urls:
    description: Further indexes (pip C(--extra-index-url)), for example the PyTorch wheel index for the node's CUDA.
    type: list
    elements: str
    default: []
  find_links:
    description: Directories or URLs holding wheels (pip C(--find-links)), for example the mirror node's C(/wheels/) page.
    type: list
    elements: str
    default: []
  no_index:
    description: Use no index at all, only O(find_links).
    type: bool
    default: false
  trusted_hosts:
    description: Hosts pip trusts without a valid certificate (pip C(--trusted-host)).
    type: list
    elements: str
    default: []
  cert:
    description: CA bundle pip verifies https sources with (pip C(--cert)).
    type: path
  timeout:
    description: Socket timeout for pip, in seconds.
    type: int
    default: 30
  retries:
    description: How often pip retries a failed connection.
    type: int
    default: 2
"""
