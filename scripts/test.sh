#!/usr/bin/env bash
# The full test suite: bootstrap, lint, then pytest (unit, distributed gloo, integration).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh" || exit 1
set +e
cd "$ROOT"
"$VENV/bin/ruff" check gigatron tests benchmarks || exit 1
"$VENV/bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$status"
