#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), then unit and end-to-end tests.
# The end-to-end tests build the plugins to wasm32-wasip2 themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --locked "$@"
