"""After the drift rerun: the file deleted inside transformers on node1 is back (molecule/default/drifts/venv_file_deleted.yml)."""
from __future__ import annotations

import csv
import io

testinfra_hosts = ["node1"]
VENV = "/opt/autoglm/venvs/autoglm/current"
SERVICE_USER = "autoglm-inference"


def site_packages(host) -> str:
    return host.run("ls -d %s/lib/python3*/site-packages", VENV).stdout.split()[0]


def test_the_deleted_module_is_back_with_its_recorded_size(host):
    site = site_packages(host)
    record = host.run("cat %s/transformers-*.dist-info/RECORD", site)
    assert record.rc == 0, record.stderr
    rows = {row[0]: row for row in csv.reader(io.StringIO(record.stdout)) if row}
    entry = rows["transformers/utils/import_utils.py"]
    restored = host.file("%s/transformers/utils/import_utils.py" % site)
    assert restored.exists and restored.size == int(entry[2])


def test_every_file_of_every_package_matches_its_record(host):
    site = site_packages(host)
    script = ("import csv,glob,os,sys\nbad=[]\nfor r in glob.glob(sys.argv[1]+'/*.dist-info/RECORD'):\n"
              " for row in csv.reader(open(r)):\n"
              "  if row and row[2] and not row[0].endswith('.pyc'):\n"
              "   p=os.path.normpath(os.path.join(sys.argv[1],row[0]))\n"
              "   if not os.path.isfile(p) or os.path.getsize(p)!=int(row[2]): bad.append(p)\nprint(len(bad), bad[:5])")
    assert host.run("python3 -c %s %s", script, site).stdout.strip() == "0 []"


def test_the_service_user_imports_transformers(host):
    cmd = host.run("runuser -u %s -- %s/bin/python -c 'import transformers.utils.import_utils'", SERVICE_USER, VENV)
    assert cmd.rc == 0, cmd.stderr
