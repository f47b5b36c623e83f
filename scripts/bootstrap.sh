#!/usr/bin/env bash
# Create .venv if missing and install gigatron with its dependencies; a no-op when up to date.
# Run it alone to set up, or let scripts/pretrain.sh and scripts/test.sh source it.
#   PYTHON=python3.11           interpreter for the new venv (default: python3)
#   GIGATRON_TORCH_INDEX=URL    pip index for torch, e.g. https://download.pytorch.org/whl/cu128 on a cluster
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi

# Reinstall only when the dependency list changed since the last successful install.
STAMP="$VENV/.gigatron-install"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) torch=$TORCH_VERSION ${GIGATRON_TORCH_INDEX:-}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[bootstrap] installing torch==$TORCH_VERSION and gigatron[dev] into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "${GIGATRON_TORCH_INDEX:-}" ]; then
        "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" --index-url "$GIGATRON_TORCH_INDEX"
    else
        "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
    fi
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]"
    echo "$WANT" > "$STAMP"
fi
