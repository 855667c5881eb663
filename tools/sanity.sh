#!/usr/bin/env bash
# ansible-test sanity, the collection checks Galaxy and Automation Hub run, on this checkout as it is now
# (tracked and new files, what .gitignore leaves out excepted), copied to .cache/sanity laid out as
# ansible_collections/autoglm/deploy, the layout ansible-test requires. Runs on the tool venv's Python only.
# Exceptions: tests/sanity/ignore-2.X.txt, one justified line each.
#   tools/sanity.sh                       every sanity test
#   tools/sanity.sh --test pylint ...     any ansible-test sanity options (one test while iterating)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${AUTOGLM_TOOL_VENV:-$REPO_ROOT/.venv}/bin"
copy="$REPO_ROOT/.cache/sanity/ansible_collections/autoglm/deploy"

# A fresh copy each run (a second or less): files deleted in the checkout must not linger in it.
rm -rf "$REPO_ROOT/.cache/sanity"
mkdir -p "$copy"
cd "$REPO_ROOT"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' path; do
      if [ -e "$path" ] || [ -L "$path" ]; then printf '%s\0' "$path"; fi   # tracked but deleted: skipped
    done \
  | tar -cf - --null --no-recursion -T - | tar -xf - -C "$copy"

# ansible-test bootstraps pip into each venv it builds for a test (pylint, yamllint, ...; cached under
# ~/.ansible/test/venv) with a get-pip script from ci-files.testing.ansible.com. Where that host cannot be
# reached (only PyPI can, here), a stand-in with the same contract does it from the pip that ships with Python.
python_version="$("$TOOLS/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pip_version="$("$TOOLS/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version="'"$python_version"'"))["pip"])')"
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$get_pip" ]; then
  mkdir -p "$(dirname "$get_pip")"
  if ! timeout 20 "$TOOLS/python" -c 'import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "https://ci-files.testing.ansible.com/ansible-test/get-pip-$pip_version.py" "$get_pip.download" 2>/dev/null; then
    cat > "$get_pip.download" <<'EOF'
"""Stand-in for get-pip.py (ci-files.testing.ansible.com was not reachable), written by autoglm.deploy's
tools/sanity.sh. Same contract: installs pip and the packages named in argv into this interpreter's venv,
from the pip bundled with Python (ensurepip) upgraded from the package index."""
import subprocess
import sys

ARGS = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
# in a child: ensurepip points PIP_CONFIG_FILE at /dev/null, which would drop the index and CA settings below
subprocess.check_call([sys.executable, '-m', 'ensurepip'])
sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install', '--upgrade', '--force-reinstall'] + ARGS))
EOF
  fi
  mv "$get_pip.download" "$get_pip"
fi

cd "$copy"
# The content root named outright: otherwise ansible-test looks upward for a git work tree, finds this
# checkout's (where .cache is ignored) and sees no files at all.
export ANSIBLE_TEST_CONTENT_ROOT="$copy"
exec "$TOOLS/ansible-test" sanity --python "$python_version" --color no "$@"
