"""The progress callback's line: every known part, nothing guessed for the unknown ones."""
from __future__ import annotations

import pytest

from ansible_collections.autoglm.deploy.plugins.callback.progress import human_duration, progress_line


@pytest.mark.parametrize("progress, line", [
    (dict(label="weights", phase="running", done=851443712, total=21045339750, items="files", items_done=3,
          items_total=12, rate=102760448, eta_s=195.4),
     "node1: weights running 812.0 MiB / 19.6 GiB (4%), 3/12 files, 98.0 MiB/s, ETA 3m15s"),
    (dict(label="venv", phase="installing", done=0, total=1073741824, items="packages", items_done=0, items_total=37,
          rate=None, eta_s=None),
     "node1: venv installing 0 B / 1.0 GiB (0%), 0/37 packages"),
    (dict(label="venv", phase="collecting wheels", done=199229440, total=None, items="wheels", items_done=4,
          items_total=None, rate=20971520, eta_s=None),
     "node1: venv collecting wheels 190.0 MiB, 4/? wheels, 20.0 MiB/s"),
    (dict(label="venv", phase="creating the venv", done=None, total=None, rate=None, eta_s=None),
     "node1: venv creating the venv"),
])
def test_progress_line(progress, line):
    assert progress_line("node1", progress) == line


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.6, "1m00s"), (195, "3m15s"), (3725, "1h02m")])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text
