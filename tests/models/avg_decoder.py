"""A designed decoder for AVG over the shapes world: it generates identifiers of a codebook
that AVG learned, as an encoder-decoder whose weights are that codebook.

    python avg_decoder.py WORLD_DIR CODEBOOK_FILE OUT_DIR

CODEBOOK_FILE is the `avg-codebook` blob the avg plugin stored (24-byte header: magic
"QAVGCBK\\0", format u16, reserved u16, dim, k, levels as u32; then k x dim f32, little
endian). The encoder is the world's `shapes-decoder-encoder.onnx` (a caption's word embeddings in
the 18-axis space). At every step the decoder reads the sum of those states, q, and scores code c
with T * (q . codeword_c): the same order as AVG's zero-shot scorer (which adds the same terms
over a sequence), so a beam over it finds the identifiers whose reconstruction best matches the
caption. Writes OUT_DIR/avg-decoder.onnx and its manifest avg-decoder.json.
"""

import json
import os
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 10
TEMPERATURE = 8.0


def read_codebook(path):
    data = open(path, "rb").read()
    if data[:8] != b"QAVGCBK\0":
        raise SystemExit(f"{path} is not an avg codebook")
    dim, k, levels = struct.unpack_from("<III", data, 12)
    words = np.frombuffer(data, dtype="<f4", count=k * dim, offset=24).reshape(k, dim)
    return words, levels


def main():
    world, codebook_file, out_dir = sys.argv[1:4]
    words, _levels = read_codebook(codebook_file)
    k, dim = words.shape
    os.makedirs(out_dir, exist_ok=True)
    n, s, t = "n", "s", "t"
    nodes = [
        helper.make_node("Cast", ["encoder_attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["encoder_hidden_states", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),  # [n, D]
        helper.make_node("MatMul", ["pooled", "codebook_t"], ["scores"]),  # [n, K]
        helper.make_node("Mul", ["scores", "temperature"], ["scaled"]),
        helper.make_node("Unsqueeze", ["scaled", "axis1"], ["scaled3"]),  # [n, 1, K]
        helper.make_node("Shape", ["decoder_input_ids"], ["ids_shape"]),
        helper.make_node("Concat", ["ids_shape", "vocab"], ["logits_shape"], axis=0),
        helper.make_node("Expand", ["scaled3", "logits_shape"], ["logits"]),  # [n, t, K]
    ]
    init = [
        numpy_helper.from_array(np.ascontiguousarray(words.T.astype(np.float32)), "codebook_t"),
        numpy_helper.from_array(np.array(TEMPERATURE, dtype=np.float32), "temperature"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([k], dtype=np.int64), "vocab"),
    ]
    graph = helper.make_graph(
        nodes,
        "avg_decoder",
        [
            helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, [n, t]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [n, s, dim]),
            helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, [n, s]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, t, k])],
        init,
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION, producer_name="avg_decoder.py")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(out_dir, "avg-decoder.onnx"))
    manifest = json.load(open(os.path.join(world, "shapes-decoder.json")))
    manifest.update({
        "name": "avg-decoder",
        "files": {"model": os.path.abspath(os.path.join(out_dir, "avg-decoder.onnx")),
                  "encoder": os.path.abspath(os.path.join(world, manifest["files"]["encoder"]))},
        "decoder": {"input_ids": "decoder_input_ids", "encoder_hidden_states": "encoder_hidden_states",
                    "encoder_attention_mask": "encoder_attention_mask", "logits": "logits", "start_token": 0},
    })
    with open(os.path.join(out_dir, "avg-decoder.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
