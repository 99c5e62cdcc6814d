"""Builds the small ONNX models the tests use, with designed (not trained) weights.

    python make_models.py OUT_DIR TOKENIZER_JSON

- projector.onnx: phi(x) = x @ W + b, a vector-to-vector model (LinCIR's image-to-token map).
- captioner.onnx (+ captioner-encoder.onnx): an encoder-decoder that generates a caption's
  attribute codes (colour, then shape), for generative retrieval.
- tiny-lm.onnx: a decoder-only language model with one attention layer, seeded random weights
  and a key/value cache (past_key_values.0.* in, present.0.* out), over the WordPiece vocabulary;
  tiny-lm-split.onnx + tiny-lm-split-with-past.onnx: the same in optimum's split layout.
- slow-lm.onnx: a decoder-only model built to be slow (a deep stack of matrix multiplies per
  token, a 64-code vocabulary), so a decoder step over long prefixes outlasts any call deadline.
- slot-text-embeds.onnx (+ slot-text-lookup.onnx): the same encoder in the inputs_embeds layout,
  with its embedding layer as a separate graph.
- cross-attributes.onnx: a cross-encoder scoring a (query, text) pair by the attribute words the
  two segments share, so it only works if the segments' token type ids reach it.
- color-image.onnx: an image encoder into slot-text's space for pictures of one shape on white:
  colour from the mean colour, circle or square from patch saturation; 4x4 patch means are its
  tokens.
- lincir-phi.onnx: phi into slot-text's token space (keeps shape, halves colour).
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


# text_embeds = mean of last_hidden_state over the tokens attention_mask keeps (needs the
# initializers axis1 = [1] and axis2 = [2]).
MEAN_POOL = [
    helper.make_node("Cast", ["attention_mask"], ["am2"], to=TensorProto.FLOAT),
    helper.make_node("Unsqueeze", ["am2", "axis2"], ["am"]),
    helper.make_node("Mul", ["last_hidden_state", "am"], ["masked"]),
    helper.make_node("ReduceSum", ["masked", "axis1"], ["sum"], keepdims=0),
    helper.make_node("ReduceSum", ["am", "axis1"], ["count"], keepdims=0),
    helper.make_node("Div", ["sum", "count"], ["text_embeds"]),
]


def save(graph, out_dir, name, manifest=None):
    """Write `graph` as NAME.onnx, and its manifest (if any) as NAME.json."""
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out_dir, f"{name}.onnx"))
    if manifest is not None:
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(manifest, f, indent=2)


def attribute_table(tokenizer_json):
    """Token embeddings over the tokenizer's vocabulary: each attribute word on its own axis,
    every other token zero."""
    with open(tokenizer_json) as f:
        vocab = json.load(f)["model"]["vocab"]
    table = np.zeros((len(vocab), len(AXES)), dtype=np.float32)
    for axis, word in enumerate(AXES):
        table[vocab[word], axis] = 1.0
    return table


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
        graph,
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


def lincir_phi(out_dir):
    """phi for composed retrieval in slot-text's space: an image embedding becomes a pseudo-word
    that keeps the image's shape and half its colour, so the modification text's colour wins."""
    dim = len(AXES)
    weights = np.diag([0.5, 0.5, 0.5, 1.0, 1.0, 1.0]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image_embeds", "W"], ["token_embeds"])],
        "lincir_phi",
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", dim])],
        [helper.make_tensor_value_info("token_embeds", TensorProto.FLOAT, ["n", dim])],
        [numpy_helper.from_array(weights, "W")],
    )
    save(
        graph,
        out_dir,
        "lincir-phi",
        {
            "name": "lincir-phi",
            "role": "projector",
            "files": {"model": "lincir-phi.onnx"},
            "inputs": {"vectors": "image_embeds"},
            "output": {"name": "token_embeds", "kind": "pooled"},
            "normalize": False,
        },
    )


def slot_text(out_dir, tokenizer_json):
    dim = len(AXES)
    table = attribute_table(tokenizer_json)

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
        *MEAN_POOL,
    ]
    init = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(nodes, "slot_text", inputs, outputs, init)
    save(
        graph,
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


def slot_text_embeds(out_dir, tokenizer_json):
    """slot-text in the inputs_embeds export layout: the graph takes token embeddings, and the
    embedding layer is its own graph, as Hugging Face exports of `get_input_embeddings()` are."""
    dim = len(AXES)
    table = attribute_table(tokenizer_json)
    lookup = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["embeddings"])],
        "slot_text_lookup",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "s"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", "s", dim])],
        [numpy_helper.from_array(table, "table")],
    )
    save(lookup, out_dir, "slot-text-lookup")
    nodes = [
        helper.make_node("Identity", ["inputs_embeds"], ["last_hidden_state"]),
        *MEAN_POOL,
    ]
    graph = helper.make_graph(
        nodes,
        "slot_text_embeds",
        [
            helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["n", "s", dim]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "s"]),
        ],
        [
            helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["n", dim]),
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["n", "s", dim]),
        ],
        [numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    save(
        graph,
        out_dir,
        "slot-text-embeds",
        {
            "name": "slot-text-embeds",
            "role": "text-encoder",
            "files": {"model": "slot-text-embeds.onnx", "tokenizer": os.path.abspath(tokenizer_json)},
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
            "output": {"name": "text_embeds", "kind": "pooled"},
            "token_output": "last_hidden_state",
            "tokenizer": {"max_length": 77},
            "slots": {"placeholder": "$", "embeds_input": "inputs_embeds", "token_embeddings": "slot-text-lookup.onnx", "dim": dim},
            "normalize": True,
        },
    )


def cross_attributes(out_dir, tokenizer_json):
    """A cross-encoder: score = attribute axes of segment 0 (the query) dot those of segment 1."""
    table = attribute_table(tokenizer_json)
    n, s = "n", "s"
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["am2"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["tt2"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["am2", "tt2"], ["second2"]),
        helper.make_node("Sub", ["am2", "second2"], ["first2"]),
        helper.make_node("Unsqueeze", ["first2", "axis2"], ["first"]),
        helper.make_node("Unsqueeze", ["second2", "axis2"], ["second"]),
        helper.make_node("Mul", ["tokens", "first"], ["a_tokens"]),
        helper.make_node("Mul", ["tokens", "second"], ["b_tokens"]),
        helper.make_node("ReduceSum", ["a_tokens", "axis1"], ["a"], keepdims=0),
        helper.make_node("ReduceSum", ["b_tokens", "axis1"], ["b"], keepdims=0),
        helper.make_node("Mul", ["a", "b"], ["ab"]),
        helper.make_node("ReduceSum", ["ab", "axis1"], ["logits"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cross_attributes",
        [helper.make_tensor_value_info(name, TensorProto.INT64, [n, s]) for name in ["input_ids", "attention_mask", "token_type_ids"]],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, 1])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    save(
        graph,
        out_dir,
        "cross-attributes",
        {
            "name": "cross-attributes",
            "role": "cross-encoder",
            "files": {"model": "cross-attributes.onnx", "tokenizer": os.path.abspath(tokenizer_json)},
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "token_type_ids": "token_type_ids"},
            "output": {"name": "logits", "kind": "pooled"},
            "tokenizer": {"max_length": 128},
            "normalize": False,
        },
    )


def color_image(out_dir):
    """An image encoder into the slot text encoder's space, for pictures of one centred shape on
    white. Mean red, green and blue map to the colour axes. Shape comes from 4x4 patches of
    colour saturation: a square fills the patches at the crop's corners, a circle does not."""
    side, dim = 32, len(AXES)
    to_axes = np.zeros((3, dim), dtype=np.float32)
    to_axes[0, AXES.index("red")] = 1.0
    to_axes[1, AXES.index("green")] = 1.0
    to_axes[2, AXES.index("blue")] = 1.0
    # A saturated colour's other channels are near 0; subtracting the mean channel value keeps
    # white and grey away from every colour.
    centre = np.eye(3, dtype=np.float32) - 1.0 / 3.0
    shape_scale = 0.4
    circle_axis = np.zeros((1, dim), dtype=np.float32)
    circle_axis[0, AXES.index("circle")] = shape_scale
    square_axis = np.zeros((1, dim), dtype=np.float32)
    square_axis[0, AXES.index("square")] = shape_scale
    graph = helper.make_graph(
        [
            # Colour.
            helper.make_node("ReduceMean", ["pixel_values"], ["rgb"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["rgb", "centre"], ["centred"]),
            helper.make_node("MatMul", ["centred", "to_axes"], ["colour"]),
            # Patches and their saturation (max minus min channel).
            helper.make_node("AveragePool", ["pixel_values"], ["patches"], kernel_shape=[8, 8], strides=[8, 8]),
            helper.make_node("Reshape", ["patches", "patch_shape"], ["flat"]),
            helper.make_node("Transpose", ["flat"], ["patch_tokens"], perm=[0, 2, 1]),
            helper.make_node("ReduceMax", ["flat"], ["high"], axes=[1], keepdims=0),
            helper.make_node("ReduceMin", ["flat"], ["low"], axes=[1], keepdims=0),
            helper.make_node("Sub", ["high", "low"], ["saturation"]),
            # Squareness: how saturated the corner patches are (x4: a square covers a quarter of
            # each); roundness: the centre's saturation that the corners do not explain.
            helper.make_node("Gather", ["saturation", "corners"], ["corner_sat"], axis=1),
            helper.make_node("ReduceMean", ["corner_sat"], ["corner"], axes=[1], keepdims=1),
            helper.make_node("Gather", ["saturation", "middle"], ["middle_sat"], axis=1),
            helper.make_node("ReduceMean", ["middle_sat"], ["mid"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["corner", "four"], ["square"]),
            helper.make_node("Sub", ["mid", "square"], ["round_raw"]),
            helper.make_node("Relu", ["round_raw"], ["round"]),
            helper.make_node("MatMul", ["square", "square_axis"], ["square_part"]),
            helper.make_node("MatMul", ["round", "circle_axis"], ["circle_part"]),
            helper.make_node("Add", ["colour", "square_part"], ["with_square"]),
            helper.make_node("Add", ["with_square", "circle_part"], ["image_embeds"]),
        ],
        "color_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, side, side])],
        [
            helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", dim]),
            helper.make_tensor_value_info("patch_tokens", TensorProto.FLOAT, ["n", 16, 3]),
        ],
        [
            numpy_helper.from_array(centre, "centre"),
            numpy_helper.from_array(to_axes, "to_axes"),
            numpy_helper.from_array(np.array([0, 3, 16], dtype=np.int64), "patch_shape"),
            numpy_helper.from_array(np.array([0, 3, 12, 15], dtype=np.int64), "corners"),
            numpy_helper.from_array(np.array([5, 6, 9, 10], dtype=np.int64), "middle"),
            numpy_helper.from_array(np.array(4.0, dtype=np.float32), "four"),
            numpy_helper.from_array(square_axis, "square_axis"),
            numpy_helper.from_array(circle_axis, "circle_axis"),
        ],
    )
    save(
        graph,
        out_dir,
        "color-image",
        {
            "name": "color-image",
            "role": "image-encoder",
            "files": {"model": "color-image.onnx"},
            "inputs": {"pixel_values": "pixel_values"},
            "output": {"name": "image_embeds", "kind": "pooled"},
            "token_output": "patch_tokens",
            "preprocess": {"resize": side, "crop": side, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
            "normalize": True,
        },
    )


# The captioner's code vocabulary: what it generates for an image's attributes.
CODES = ["<bos>", "<eos>", "red", "blue", "green", "circle", "square", "triangle"]
MAX_STEPS = 8


def captioner(out_dir, tokenizer_json):
    """An encoder-decoder that writes a caption's colour code, then its shape code, then <eos>."""
    dim = len(AXES)
    table = attribute_table(tokenizer_json)
    n, s, t = "n", "s", "t"

    encoder = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
            helper.make_node("Cast", ["attention_mask"], ["am2"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["am2", "axis2"], ["am"]),
            helper.make_node("Mul", ["tokens", "am"], ["last_hidden_state"]),
        ],
        "captioner_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [n, s]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [n, s]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [n, s, dim])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2")],
    )
    save(encoder, out_dir, "captioner-encoder")

    # Step 0 reads the colour axes, step 1 the shape axes, later steps say <eos>. Colour weighs
    # more than shape, so when no item has both, the right colour wins.
    weights = np.zeros((MAX_STEPS, dim, len(CODES)), dtype=np.float32)
    bias = np.zeros((MAX_STEPS, len(CODES)), dtype=np.float32)
    for axis in range(3):
        weights[0, axis, 2 + axis] = 6.0
        weights[1, 3 + axis, 5 + axis] = 4.0
    bias[2:, 1] = 5.0
    decoder = helper.make_graph(
        [
            helper.make_node("Cast", ["encoder_attention_mask"], ["em2"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["em2", "axis2"], ["em"]),
            helper.make_node("Mul", ["encoder_hidden_states", "em"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),
            helper.make_node("Unsqueeze", ["pooled", "axes12"], ["pooled4"]),
            helper.make_node("Shape", ["decoder_input_ids"], ["ids_shape"]),
            helper.make_node("Slice", ["ids_shape", "one_i", "two_i"], ["steps"]),
            helper.make_node("Slice", ["weights", "zero_i", "steps", "zero_i"], ["w"]),
            helper.make_node("Slice", ["bias", "zero_i", "steps", "zero_i"], ["b"]),
            helper.make_node("MatMul", ["pooled4", "w"], ["scores4"]),
            helper.make_node("Squeeze", ["scores4", "axis2"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
        ],
        "captioner_decoder",
        [
            helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, [n, t]),
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [n, s, dim]),
            helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, [n, s]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, t, len(CODES)])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes12"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero_i"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one_i"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "two_i"),
        ],
    )
    save(
        decoder,
        out_dir,
        "captioner",
        {
            "name": "captioner",
            "role": "decoder",
            "files": {"model": "captioner.onnx", "encoder": "captioner-encoder.onnx", "tokenizer": os.path.abspath(tokenizer_json)},
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
            "output": {"name": "last_hidden_state", "kind": "tokens"},
            "tokenizer": {"max_length": 77},
            "decoder": {
                "input_ids": "decoder_input_ids",
                "encoder_hidden_states": "encoder_hidden_states",
                "encoder_attention_mask": "encoder_attention_mask",
                "logits": "logits",
                "start_token": 0,
            },
            "normalize": False,
        },
    )


def tiny_lm_graph(vocab, weights, past, memory):
    """The tiny decoder-only graph. `past`: it takes past key/values (else it starts from none, as
    a split export's first-step graph does). `memory`: it has a second cache entry, a vector
    from the sequence's first token, which the first step outputs and later steps only read,
    as split encoder-decoder exports treat cross-attention keys and values."""
    dim, heads, head_dim = 8, 2, 4
    n, t, p, total = "n", "t", "p", "p_plus_t"

    def heads_of(name, out):
        # [n, t, dim] -> [n, heads, t, head_dim]
        return [
            helper.make_node("MatMul", ["x", f"W{name}"], [f"{name}_flat"]),
            helper.make_node("Reshape", [f"{name}_flat", "split_heads"], [f"{name}_4"]),
            helper.make_node("Transpose", [f"{name}_4"], [out], perm=[0, 2, 1, 3]),
        ]

    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["tok"]),
        helper.make_node("Gather", ["pos_embed", "position_ids"], ["pos"]),
        helper.make_node("Add", ["tok", "pos"], ["x"]),
        *heads_of("q", "q"),
        *heads_of("k", "k_new"),
        *heads_of("v", "v_new"),
    ]
    if past:
        nodes += [
            helper.make_node("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=2),
            helper.make_node("Concat", ["past_key_values.0.value", "v_new"], ["present.0.value"], axis=2),
            helper.make_node("Shape", ["past_key_values.0.key"], ["past_shape"]),
            helper.make_node("Gather", ["past_shape", "two_s"], ["past_len"]),
        ]
    else:
        nodes += [
            helper.make_node("Identity", ["k_new"], ["present.0.key"]),
            helper.make_node("Identity", ["v_new"], ["present.0.value"]),
            helper.make_node("Identity", ["zero_s"], ["past_len"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["present.0.key"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "k_t"], ["raw_scores"]),
        helper.make_node("Mul", ["raw_scores", "inv_sqrt_d"], ["scores"]),
        # Causal mask over absolute positions: query i sits at past + i.
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one_s"], ["new_len"]),
        helper.make_node("Add", ["past_len", "new_len"], ["all_len"]),
        helper.make_node("Range", ["zero_s", "all_len", "one_s"], ["key_pos"]),
        helper.make_node("Range", ["past_len", "all_len", "one_s"], ["query_pos"]),
        helper.make_node("Unsqueeze", ["query_pos", "axis1"], ["query_col"]),
        helper.make_node("Greater", ["key_pos", "query_col"], ["future"]),
        helper.make_node("Where", ["future", "minus_inf", "scores"], ["causal"]),
        # Padding mask from attention_mask [n, past + t].
        helper.make_node("Cast", ["attention_mask"], ["am"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one_f", "am"], ["pad"]),
        helper.make_node("Mul", ["pad", "minus_inf"], ["pad_bias2"]),
        helper.make_node("Unsqueeze", ["pad_bias2", "axes12"], ["pad_bias"]),
        helper.make_node("Add", ["causal", "pad_bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "present.0.value"], ["ctx4"]),
        helper.make_node("Transpose", ["ctx4"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_heads"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "Wo"], ["mixed"]),
        helper.make_node("Add", ["x", "mixed"], ["h"]),
        helper.make_node("MatMul", ["h", "unembed"], ["logits" if not memory else "token_logits"]),
    ]
    cache = lambda name, length: helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, heads, length, head_dim])
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [n, t]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [n, total]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [n, t]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, t, vocab]),
        cache("present.0.key", total),
        cache("present.0.value", total),
    ]
    if past:
        inputs += [cache("past_key_values.0.key", p), cache("past_key_values.0.value", p)]
    if memory:
        memory_info = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, 1, dim])
        if past:
            inputs.append(memory_info("past_key_values.1.memory"))
            source = "past_key_values.1.memory"
        else:
            nodes += [
                helper.make_node("Gather", ["x", "zero_s"], ["first"], axis=1),
                helper.make_node("Unsqueeze", ["first", "axis1"], ["present.1.memory"]),
            ]
            outputs.append(memory_info("present.1.memory"))
            source = "present.1.memory"
        nodes += [
            helper.make_node("MatMul", [source, "Wm"], ["memory_logits"]),
            helper.make_node("Add", ["token_logits", "memory_logits"], ["logits"]),
        ]
    used = {name for node in nodes for name in node.input}
    init = [numpy_helper.from_array(value, name) for name, value in weights.items() if name in used]
    return helper.make_graph(nodes, "tiny_lm", inputs, outputs, init)


def tiny_lm(out_dir, tokenizer_json):
    """A decoder-only model with a key/value cache (token and position embeddings, one causal
    self-attention layer of 2 heads x 4, a vocabulary-sized output), in two export layouts:
    tiny-lm (one graph taking an at first empty cache) and tiny-lm-split (a first-step graph
    plus a graph with past inputs, and a carried cache entry). Weights are random (seeded): the
    tests compare cached steps with full passes, not meanings."""
    with open(tokenizer_json) as f:
        vocab = len(json.load(f)["model"]["vocab"])
    rng = np.random.default_rng(7)
    dim, heads, head_dim, max_pos = 8, 2, 4, 64
    w = lambda *shape: rng.normal(0.0, 0.5, shape).astype(np.float32)
    weights = {
        "embed": w(vocab, dim),
        "pos_embed": w(max_pos, dim),
        "Wq": w(dim, dim),
        "Wk": w(dim, dim),
        "Wv": w(dim, dim),
        "Wo": w(dim, dim),
        "unembed": w(dim, vocab),
        "Wm": w(dim, vocab),
        "split_heads": np.array([0, 0, heads, head_dim], dtype=np.int64),
        "merge_heads": np.array([0, 0, dim], dtype=np.int64),
        "inv_sqrt_d": np.array(1.0 / np.sqrt(head_dim), dtype=np.float32),
        "minus_inf": np.array(-1e9, dtype=np.float32),
        "one_f": np.array(1.0, dtype=np.float32),
        "zero_s": np.array(0, dtype=np.int64),
        "one_s": np.array(1, dtype=np.int64),
        "two_s": np.array(2, dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
        "axes12": np.array([1, 2], dtype=np.int64),
    }
    decoder = {
        "input_ids": "input_ids",
        "logits": "logits",
        "start_token": 1,
        "attention_mask": "attention_mask",
        "position_ids": "position_ids",
        "cache": {"past_prefix": "past_key_values.", "present_prefix": "present."},
    }
    manifest = lambda name, files: {
        "name": name,
        "role": "decoder",
        "files": {**files, "tokenizer": os.path.abspath(tokenizer_json)},
        "inputs": {"input_ids": "input_ids"},
        "output": {"name": "logits", "kind": "tokens"},
        "tokenizer": {"max_length": 32},
        "decoder": decoder,
        "normalize": False,
    }
    save(tiny_lm_graph(vocab, weights, past=True, memory=False), out_dir, "tiny-lm", manifest("tiny-lm", {"model": "tiny-lm.onnx"}))
    save(tiny_lm_graph(vocab, weights, past=True, memory=True), out_dir, "tiny-lm-split-with-past")
    save(
        tiny_lm_graph(vocab, weights, past=False, memory=True),
        out_dir,
        "tiny-lm-split",
        manifest("tiny-lm-split", {"model": "tiny-lm-split.onnx", "decoder_with_past": "tiny-lm-split-with-past.onnx"}),
    )


def slow_lm(out_dir, tokenizer_json, layers=128, dim=64, vocab=64):
    """Token ids (any, taken mod the vocabulary) -> embeddings -> `layers` x (MatMul, Tanh) ->
    logits. Each MatMul is small, so ONNX Runtime's terminate flag, checked between nodes, stops
    a run soon after it is set."""
    rng = np.random.default_rng(11)
    w = lambda *shape: (rng.normal(0.0, 1.0, shape) / np.sqrt(shape[0])).astype(np.float32)
    nodes = [helper.make_node("Mod", ["input_ids", "vocab"], ["ids"]), helper.make_node("Gather", ["embed", "ids"], ["x0"])]
    inits = [numpy_helper.from_array(np.array(vocab, dtype=np.int64), "vocab"), numpy_helper.from_array(w(vocab, dim), "embed")]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"]))
        inits.append(numpy_helper.from_array(w(dim, dim), f"w{i}"))
    nodes.append(helper.make_node("MatMul", [f"x{layers}", "unembed"], ["logits"]))
    inits.append(numpy_helper.from_array(w(dim, vocab), "unembed"))
    graph = helper.make_graph(
        nodes,
        "slow_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", "t", vocab])],
        inits,
    )
    save(
        graph,
        out_dir,
        "slow-lm",
        {
            "name": "slow-lm",
            "role": "decoder",
            "files": {"model": "slow-lm.onnx", "tokenizer": os.path.abspath(tokenizer_json)},
            "inputs": {"input_ids": "input_ids"},
            "output": {"name": "logits", "kind": "tokens"},
            "tokenizer": {"max_length": 32},
            "decoder": {"input_ids": "input_ids", "logits": "logits", "start_token": 1},
            "normalize": False,
        },
    )


def main():
    out_dir, tokenizer_json = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    projector(out_dir)
    lincir_phi(out_dir)
    slot_text(out_dir, tokenizer_json)
    slot_text_embeds(out_dir, tokenizer_json)
    captioner(out_dir, tokenizer_json)
    tiny_lm(out_dir, tokenizer_json)
    slow_lm(out_dir, tokenizer_json)
    cross_attributes(out_dir, tokenizer_json)
    color_image(out_dir)


if __name__ == "__main__":
    main()
