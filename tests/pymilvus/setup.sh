#!/bin/sh
# Creates (or reuses) a Python virtual environment with pymilvus and Milvus Lite from
# PyPI for the pymilvus tests (crates/cli/tests/pymilvus.rs, bench/pymilvus/).
#   tests/pymilvus/setup.sh VENV_DIR
# Prints the environment's python on success.
set -eu
venv="${1:?usage: setup.sh VENV_DIR}"
here=$(cd "$(dirname "$0")" && pwd)
stamp="$venv/.magpie-requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$here/requirements.txt"; then
    echo "$venv/bin/python"
    exit 0
fi
python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
cp "$here/requirements.txt" "$stamp"
echo "$venv/bin/python"
