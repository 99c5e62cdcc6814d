"""Builds the small ONNX models the tests use, with designed (not trained) weights.

    python make_models.py OUT_DIR TOKENIZER_JSON

- projector.onnx: phi(x) = x @ W + b, a vector-to-vector model (LinCIR's image-to-token map).
- slot-text.onnx: a slot-capable text encoder over the given WordPiece vocabulary. Each word's
  token embedding lies on a known attribute axis (colours, shapes), so a caption's pooled
  embedding means something; a placeholder token's embedding can be replaced by a given vector.

Every model has a JSON manifest beside it. The output is deterministic.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
# ONNX Runtime 1.31 reads IR versions up to 13; onnx 1.23 would write 14.
IR_VERSION = 10

# The projector's weights; tests recompute phi from these.
PROJECTOR_W = np.array([[0.5, -1.0, 0.0], [0.25, 0.0, 2.0], [-0.5, 1.5, 0.75], [1.0, 0.5, -0.25]], dtype=np.float32)
PROJECTOR_B = np.array([0.1, -0.2, 0.3], dtype=np.float32)

# Attribute axes of the slot text encoder.
AXES = ["red", "blue", "green", "circle", "square", "triangle"]


def save(model, out_dir, name, manifest):
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out_dir, f"{name}.onnx"))
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(manifest, f, indent=2)


def projector(out_dir):
    x = helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("token_embeds", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image_embeds", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["token_embeds"])],
        "projector",
        [x],
        [y],
        [numpy_helper.from_array(PROJECTOR_W, "W"), numpy_helper.from_array(PROJECTOR_B, "b")],
    )
    save(
        helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION),
        out_dir,
        "projector",
        {
            "name": "phi",
            "role": "projector",
            "files": {"model": "projector.onnx"},
            "inputs": {"vectors": "image_embeds"},
            "output": {"name": "token_embeds", "kind": "pooled"},
            "normalize": False,
        },
    )


def slot_text(out_dir, tokenizer_json):
    with open(tokenizer_json) as f:
        vocab = json.load(f)["model"]["vocab"]
    dim = len(AXES)
    table = np.zeros((len(vocab), dim), dtype=np.float32)
    for axis, word in enumerate(AXES):
        table[vocab[word], axis] = 1.0

    n, s = "n", "s"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [n, s]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [n, s]),
        helper.make_tensor_value_info("slot_embeds", TensorProto.FLOAT, [n, s, dim]),
        helper.make_tensor_value_info("slot_mask", TensorProto.FLOAT, [n, s]),
    ]
    outputs = [
        helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, [n, dim]),
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [n, s, dim]),
    ]
    nodes = [
        # Token embeddings, with slot positions replaced: E * (1 - m) + slots * m.
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Unsqueeze", ["slot_mask", "axis2"], ["m"]),
        helper.make_node("Sub", ["one", "m"], ["keep"]),
        helper.make_node("Mul", ["tokens", "keep"], ["kept"]),
        helper.make_node("Mul", ["slot_embeds", "m"], ["injected"]),
        helper.make_node("Add", ["kept", "injected"], ["last_hidden_state"]),
        # Mean over real tokens.
        helper.make_node("Cast", ["attention_mask"], ["am2"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["am2", "axis2"], ["am"]),
        helper.make_node("Mul", ["last_hidden_state", "am"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["sum"], keepdims=0),
        helper.make_node("ReduceSum", ["am", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["sum", "count"], ["text_embeds"]),
    ]
    init = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(nodes, "slot_text", inputs, outputs, init)
    save(
        helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION),
        out_dir,
        "slot-text",
        {
            "name": "slot-text",
            "role": "text-encoder",
            "files": {"model": "slot-text.onnx", "tokenizer": os.path.abspath(tokenizer_json)},
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
            "output": {"name": "text_embeds", "kind": "pooled"},
            "token_output": "last_hidden_state",
            "tokenizer": {"max_length": 77},
            "slots": {"placeholder": "$", "embeds_input": "slot_embeds", "mask_input": "slot_mask", "dim": dim},
            "normalize": True,
        },
    )


def main():
    out_dir, tokenizer_json = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    projector(out_dir)
    slot_text(out_dir, tokenizer_json)


if __name__ == "__main__":
    main()
