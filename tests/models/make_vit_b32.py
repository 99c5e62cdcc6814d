"""Builds a model with CLIP ViT-B/32's shapes and random weights, for speed benchmarks (speed
does not depend on the weights).

    python make_vit_b32.py OUT_DIR

- clip-vit-b32-image.onnx: pixel_values [N,3,224,224] -> image_embeds [N,512]; patch 32, width
  768, 12 layers, 12 heads.
- clip-vit-b32-text.onnx: input_ids [N,77] (CLIP's BPE, 49,408 tokens) -> text_embeds [N,512];
  width 512, 12 layers, 8 heads, causal attention.
Manifests beside them. Weights are seeded, so the files are the same on every run.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 10


class Graph:
    def __init__(self, seed):
        self.nodes, self.inits, self.rng, self.count = [], [], np.random.default_rng(seed), 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, array, stem="c"):
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape, scale=0.02):
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(self, x, d_in, d_out):
        return self.op("Add", [self.op("MatMul", [x, self.weight(d_in, d_out)]), self.const(np.zeros(d_out, np.float32), "b")])

    def layer_norm(self, x, width):
        return self.op("LayerNormalization", [x, self.const(np.ones(width, np.float32), "g"), self.const(np.zeros(width, np.float32), "b")], axis=-1)

    def gelu(self, x):
        # QuickGELU, as CLIP uses: x * sigmoid(1.702 x).
        return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.const(np.array(1.702, np.float32))])])])

    def block(self, x, width, heads, mask=None):
        head = width // heads
        h = self.layer_norm(x, width)
        qkv = self.linear(h, width, 3 * width)
        q, k, v = (self.op("Slice", [qkv, self.const(np.array([i * width])), self.const(np.array([(i + 1) * width])), self.const(np.array([-1]))]) for i in range(3))
        split = self.const(np.array([0, 0, heads, head], np.int64))

        def heads_first(t):
            return self.op("Transpose", [self.op("Reshape", [t, split])], perm=[0, 2, 1, 3])

        scores = self.op("MatMul", [heads_first(q), self.op("Transpose", [heads_first(k)], perm=[0, 1, 3, 2])])
        scores = self.op("Mul", [scores, self.const(np.array(head ** -0.5, np.float32))])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        attn = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), heads_first(v)])
        merged = self.op("Reshape", [self.op("Transpose", [attn], perm=[0, 2, 1, 3]), self.const(np.array([0, 0, width], np.int64))])
        x = self.op("Add", [x, self.linear(merged, width, width)])
        mlp = self.linear(self.gelu(self.linear(self.layer_norm(x, width), width, 4 * width)), 4 * width, width)
        return self.op("Add", [x, mlp])


def image_tower(out_dir):
    g, width, patches = Graph(1), 768, 7 * 7
    x = g.op("Conv", ["pixel_values", g.weight(width, 3, 32, 32)], strides=[32, 32])
    x = g.op("Transpose", [g.op("Reshape", [x, g.const(np.array([0, width, patches], np.int64))])], perm=[0, 2, 1])
    cls = g.op("Expand", [g.weight(1, 1, width), g.op("Concat", [g.op("Slice", [g.op("Shape", ["pixel_values"]), g.const(np.array([0])), g.const(np.array([1]))]), g.const(np.array([1, width], np.int64))], axis=0)])
    x = g.op("Add", [g.op("Concat", [cls, x], axis=1), g.weight(1, patches + 1, width)])
    x = g.layer_norm(x, width)
    for _ in range(12):
        x = g.block(x, width, 12)
    first = g.op("Squeeze", [g.op("Slice", [x, g.const(np.array([0])), g.const(np.array([1])), g.const(np.array([1]))]), g.const(np.array([1]))])
    g.nodes.append(helper.make_node("MatMul", [g.layer_norm(first, width), g.weight(width, 512)], ["image_embeds"]))
    graph = helper.make_graph(
        g.nodes,
        "clip_vit_b32_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", 512])],
        g.inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), os.path.join(out_dir, "clip-vit-b32-image.onnx"))
    manifest = {
        "name": "clip-vit-b32-image",
        "role": "image-encoder",
        "files": {"model": "clip-vit-b32-image.onnx"},
        "output": {"name": "image_embeds", "kind": "pooled"},
        "preprocess": {"resize": 224, "crop": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
        "batch": {"max_batch": 64},
    }
    json.dump(manifest, open(os.path.join(out_dir, "clip-vit-b32-image.json"), "w"), indent=2)


def text_tower(out_dir):
    g, width, steps, vocab_size = Graph(2), 512, 77, 49408
    x = g.op("Add", [g.op("Gather", [g.weight(vocab_size, width), "input_ids"]), g.weight(1, steps, width)])
    causal = np.triu(np.full((steps, steps), -1e4, np.float32), k=1)[None, None]
    mask = g.const(causal, "causal")
    for _ in range(12):
        x = g.block(x, width, 8, mask)
    x = g.layer_norm(x, width)
    # Pool at the last position (CLIP pools at the end-of-text token).
    last = g.op("Squeeze", [g.op("Slice", [x, g.const(np.array([steps - 1])), g.const(np.array([steps])), g.const(np.array([1]))]), g.const(np.array([1]))])
    g.nodes.append(helper.make_node("MatMul", [last, g.weight(width, 512)], ["text_embeds"]))
    graph = helper.make_graph(
        g.nodes,
        "clip_vit_b32_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", steps])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["n", 512])],
        g.inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION), os.path.join(out_dir, "clip-vit-b32-text.onnx"))
    manifest = {
        "name": "clip-vit-b32-text",
        "role": "text-encoder",
        "files": {"model": "clip-vit-b32-text.onnx"},
        "inputs": {"input_ids": "input_ids"},
        "output": {"name": "text_embeds", "kind": "pooled"},
        "tokenizer": {"kind": "clip-bpe", "max_length": steps, "pad_to": steps},
        "batch": {"max_batch": 64},
    }
    json.dump(manifest, open(os.path.join(out_dir, "clip-vit-b32-text.json"), "w"), indent=2)


if __name__ == "__main__":
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    image_tower(out_dir)
    text_tower(out_dir)
