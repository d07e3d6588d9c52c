#!/usr/bin/env bash
# Set up on a fresh machine (if needed) and run the default test suite (slow tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/run-tests.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit "$rc"
