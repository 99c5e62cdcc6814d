#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), builds the host and the dense plugin, runs `quarry demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release --target wasm32-wasip2 -p quarry-plugin-dense
cargo build --locked -p quarry-host
./target/debug/quarry demo "$@"
