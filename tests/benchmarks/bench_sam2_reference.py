"""Max |Keras - NumPy reference| of every SAM2 block, as a table (the tests assert the same bound, <= 1e-4 x range).

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_sam2_reference.py [--size 128] [--seed 0]

The Keras encoder and decoder are filled from a synthetic checkpoint in the official key schema; the reference is
``tests/reference/sam2_numpy.py`` (float64, official NCHW semantics). Each row: the block, the max absolute
difference, the range (max - min) of the reference output and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference import sam2_numpy as ref  # noqa: E402
from reference.sam2_schema import TINY, synthetic_state_dict, trunk_blocks  # noqa: E402

from segzoo.models.sam2.params import Sam2Params  # noqa: E402


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).transpose(0, 2, 3, 1)


def row(name: str, actual, expected) -> tuple[str, float, float]:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return name, float(np.abs(actual - expected).max()), float(expected.max() - expected.min())


def block_rows(encoder, decoder, sd: dict, size: int, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    from segzoo.models.sam2.layers import window_partition, window_unpartition

    rows = []
    x = rng.normal(size=(1, 9, 11, 96)).astype(np.float32)
    win, pad = window_partition(x, 4)
    rows.append(row("window partition (9x11 -> 12x12, w4)", win, ref.window_partition(x.astype(np.float64), 4)[0]))
    rows.append(row("window unpartition (crop to 9x11)", window_unpartition(win, 4, pad, (9, 11)), x))
    rows.append(row("position embedding (bicubic + tiles)", encoder.get_layer("trunk_pos_embed").embedding(
        size // 4, size // 4)[None], ref.pos_embed(sd, size // 4, size // 4)))
    specs = trunk_blocks(TINY)
    for block in (1, 3, 10):
        s = specs[block]
        xb = rng.normal(size=(2, s["window"], s["window"], s["dim"])).astype(np.float32)
        rows.append(row(f"attention + query pooling, block {block}", encoder.get_layer(f"trunk_blocks_{block}").attn(xb),
                        ref.multiscale_attention(xb.astype(np.float64), sd, f"image_encoder.trunk.blocks.{block}.attn",
                                                 s["heads"], True)))
    xm = rng.normal(size=(1, 4, 4, 384)).astype(np.float32)
    rows.append(row("Hiera MLP, block 4", encoder.get_layer("trunk_blocks_4").mlp(xm),
                    ref.hiera_mlp(xm.astype(np.float64), sd, "image_encoder.trunk.blocks.4.mlp")))
    for block, side, what in ((0, 32, "windowed"), (1, 32, "stage change"), (5, 8, "global"),
                              (10, 8, "stage change, padded window"), (11, 9, "padded windows")):
        s = specs[block]
        xb = rng.normal(size=(1, side, side, s["dim"])).astype(np.float32)
        rows.append(row(f"Hiera block {block} ({what}, {side}x{side})", encoder.get_layer(f"trunk_blocks_{block}")(xb),
                        ref.multiscale_block(xb.astype(np.float64), sd, f"image_encoder.trunk.blocks.{block}", s)))
    coords = rng.uniform(0, size, (1, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, -1]], np.float32)
    sparse, dense_pe, _ = decoder.get_layer("prompt_encoder")(coords, labels)
    rows.append(row("prompt encoder: points", sparse, ref.embed_points(coords.astype(np.float64),
                                                                      labels.astype(np.float64), sd, size)))
    e = size // 16
    rows.append(row("prompt encoder: dense PE", np.asarray(dense_pe).reshape(1, e, e, -1), nhwc(ref.dense_pe(sd, e))))
    for block in (0, 1):
        q, qpe = rng.normal(size=(2, 1, 10, 256))
        k, kpe = rng.normal(size=(2, 1, 64, 256))
        got = decoder.get_layer(f"transformer_layers_{block}")(*(a.astype(np.float32) for a in (q, k, qpe, kpe)))
        want = ref.two_way_block(q, k, qpe, kpe, sd, f"sam_mask_decoder.transformer.layers.{block}", block == 0)
        rows.append(row(f"two-way block {block}: tokens", got[0], want[0]))
        rows.append(row(f"two-way block {block}: image", got[1], want[1]))
    return rows


def end_to_end_rows(encoder, decoder, sd: dict, size: int, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    import keras

    image = rng.normal(size=(1, 3, size, size))
    feats = ref.image_encoder(image, sd)
    ends = [0, 2, 9, 11]
    probe = keras.Model(encoder.input, [encoder.get_layer(f"trunk_blocks_{e}").output for e in ends]
                        + [encoder.get_layer(n).output for n in ("neck_convs_3", "neck_convs_2", "neck_fuse_2")])
    outs = [np.asarray(o) for o in probe(nhwc(image).astype(np.float32))]
    neck = ref.fpn_neck([o.transpose(0, 3, 1, 2).astype(np.float64) for o in outs[:4]], sd)
    rows = [row(f"FPN neck level {i}", outs[4 + i], nhwc(neck[i])) for i in range(3)]
    got = encoder(nhwc(image).astype(np.float32))
    rows += [row(f"encoder end to end: {k}", got[k], nhwc(feats[k])) for k in feats]
    coords = np.array([[[10.0, 20.0], [size * 0.8, size * 0.5], [0.0, 0.0]]], np.float32)
    labels = np.array([[1, 0, -1]], np.float32)
    out = decoder({**{k: nhwc(v).astype(np.float32) for k, v in feats.items()}, "point_coords": coords,
                   "point_labels": labels})
    masks, iou, obj = ref.decoder(feats, coords.astype(np.float64), labels.astype(np.float64), sd, size)
    rows += [row("decoder: mask logits", out["masks"], nhwc(masks)), row("decoder: IoU", out["iou"], iou),
             row("decoder: object score", out["object_score_logits"], obj)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from segzoo.models.sam2.model import build_decoder, build_encoder
    from segzoo.models.sam2.weights import assign_state_dict

    params = Sam2Params(input_shape=[args.size, args.size, 3], num_points=3)
    encoder, decoder = build_encoder(params), build_decoder(params)
    sd = synthetic_state_dict(args.seed)
    assign_state_dict(sd, encoder, decoder, params)
    rng = np.random.default_rng(args.seed + 1)
    print(f"| block (input {args.size}x{args.size}) | max abs diff | reference range | ratio |")
    print("|---|---:|---:|---:|")
    for name, diff, scale in block_rows(encoder, decoder, sd, args.size, rng) + \
            end_to_end_rows(encoder, decoder, sd, args.size, rng):
        ratio = f"{diff / scale:.1e}" if scale else "n/a (single value)"
        print(f"| {name} | {diff:.2e} | {scale:.3g} | {ratio} |")


if __name__ == "__main__":
    main()
