#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), builds the host and the plugins, and runs two demos:
# `quarry demo` (dense text retrieval with the real MiniLM), the shapes world (text-to-image
# and composed image retrieval with the `lincir` plugin on designed CLIP-signature models), and
# `quarry eval shapes` (dense, tgdt, lincir and avg scored on the shapes world's splits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release --target wasm32-wasip2 -p quarry-plugin-dense -p quarry-plugin-lincir -p quarry-plugin-tgdt -p quarry-plugin-avg
cargo build --locked -p quarry-cli
./target/debug/quarry demo "$@"

echo
echo "Shapes world demo: 180 generated scenes, searched by caption and by image + modification text."
world=target/shapes-world/demo
if [ ! -f "$world/splits/generative/queries.jsonl" ]; then
  vendor/venv/bin/python tests/models/shapes_world.py "$world" --seed 7 \
    --clip-vocab vendor/models/clip-bpe/bpe_simple_vocab_16e6.txt.gz
fi
data=.quarry/shapes-demo
rm -rf "$data"
quarry() { ./target/debug/quarry --data-dir "$data" "$@"; }
for model in shapes-image shapes-text-slots shapes-phi; do quarry model add "$world/$model.json"; done
quarry plugin add target/wasm32-wasip2/release/quarry_plugin_lincir.wasm
quarry route set shapes --strategy lincir@0.2.0 \
  --grant-model shapes-image --grant-model shapes-text-slots --grant-model shapes-phi \
  --config '{"text-model": "shapes-text-slots", "image-model": "shapes-image", "projector": "shapes-phi"}'
quarry ingest shapes "$world/items.jsonl"
quarry search shapes "a small green triangle at the top right" -k 3
quarry search shapes "is blue" --image "$world/images/$(ls "$world/images" | grep '^large-red-circle-center\.')" -k 3

echo
echo "Evaluation: each shapes split scored with the metrics the papers use (quarry eval shapes)."
for plugin in dense tgdt avg; do quarry plugin add "target/wasm32-wasip2/release/quarry_plugin_$plugin.wasm" > /dev/null; done
quarry eval shapes "$world" --split fine --compare dense,tgdt
quarry eval shapes "$world" --split composed --compare lincir,image-only,text-only
quarry eval shapes "$world" --split generative --compare dense,avg
