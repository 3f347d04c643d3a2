"""A hand-built text tower with one known mechanism: head PLANTED copies the cue ("without" vs "with") to EOT.

Width 64 = 48 content dimensions + special ones. Every component has random weights, but all of
them except the planted head read and write content dimensions only. The cue word and its twin
have the same content and differ only in the sign of one special pair (CUE, CUE_MIRROR); every
special write comes with a mirror of the opposite sign, so every residual vector sums to zero and
its LayerNorm statistics are the same in both runs: nothing but the planted head can see which
word was there. The planted head (block 3, head 2) attends from EOT (flag QUERY) to the cue word
(flag KEY), reads CUE into its value and writes it to (OUT, OUT_MIRROR); the projection reads OUT
into feature 0, and the "image" is that feature's axis. So m(with) > 0 > m(without), and
patching, attribution and head analysis must find that head and no other.
"""
from __future__ import annotations

import torch

from probing.clip.loading import load_clip
from probing.measure.roles import PatchPair

CONTENT = slice(0, 48)
CUE, CUE_MIRROR, QUERY, QUERY_MIRROR, KEY, KEY_MIRROR, OUT, OUT_MIRROR = range(48, 56)
PLANTED = (3, 2)  # (block, head)
N_LAYERS, N_HEADS, D_HEAD = 4, 4, 16
WITH, WITHOUT, EOT = 593, 2193, 49407  # CLIP BPE ids of "with", "without" and the end of text
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "star", "cross", "diamond", "triangle")


def _zero_sum(rows: int, cols: int, scale: float, generator) -> torch.Tensor:
    """Random [rows, cols] whose columns each sum to zero (a write that keeps the residual's mean at 0)."""
    x = torch.randn(rows, cols, generator=generator) * scale
    return x - x.mean(0, keepdim=True)


def planted_model(write_config):
    """(model, tokenizer) of the planted tower (eval mode)."""
    model, _, tokenizer = load_clip(write_config("planted", layers=N_LAYERS, heads=N_HEADS))
    g = torch.Generator().manual_seed(0)
    d_model = 64
    with torch.no_grad():
        embedding = model.token_embedding.weight
        embedding.zero_()
        embedding[:, CONTENT] = _zero_sum(48, embedding.shape[0], 1.0, g).T
        embedding[WITHOUT, CONTENT] = embedding[WITH, CONTENT]
        for token, sign in ((WITH, 1.0), (WITHOUT, -1.0)):
            embedding[token, [CUE, CUE_MIRROR, KEY, KEY_MIRROR]] = torch.tensor([3.0 * sign, -3.0 * sign, 3.0, -3.0])
        embedding[EOT, [QUERY, QUERY_MIRROR]] = torch.tensor([3.0, -3.0])
        positional = model.positional_embedding
        positional.zero_()
        positional[:, CONTENT] = _zero_sum(48, positional.shape[0], 0.5, g).T
        for block in model.transformer.resblocks:
            for norm in (block.ln_1, block.ln_2):
                norm.weight.fill_(1.0)
                norm.bias.zero_()
            attn, mlp = block.attn, block.mlp
            attn.in_proj_weight.copy_(torch.randn(3 * d_model, d_model, generator=g) * 0.3)
            attn.in_proj_weight[:, 48:] = 0.0  # every head reads content only ...
            attn.in_proj_bias.copy_(torch.randn(3 * d_model, generator=g) * 0.1)
            attn.out_proj.weight.zero_()
            attn.out_proj.weight[CONTENT] = _zero_sum(48, d_model, 0.3, g)  # ... and writes content only
            attn.out_proj.bias.zero_()
            attn.out_proj.bias[CONTENT] = _zero_sum(48, 1, 0.1, g)[:, 0]
            mlp.c_fc.weight.copy_(torch.randn(*mlp.c_fc.weight.shape, generator=g) * 0.3)
            mlp.c_fc.weight[:, 48:] = 0.0
            mlp.c_fc.bias.copy_(torch.randn(mlp.c_fc.bias.shape, generator=g) * 0.1)
            mlp.c_proj.weight.zero_()
            mlp.c_proj.weight[CONTENT] = _zero_sum(48, mlp.c_proj.weight.shape[1], 0.1, g)
            mlp.c_proj.bias.zero_()
            mlp.c_proj.bias[CONTENT] = _zero_sum(48, 1, 0.1, g)[:, 0]
        layer, head = PLANTED
        attn = model.transformer.resblocks[layer].attn
        rows = slice(head * D_HEAD, (head + 1) * D_HEAD)
        for offset in (0, d_model, 2 * d_model):  # q, k, v rows of the planted head
            attn.in_proj_weight[offset + rows.start:offset + rows.stop] = 0.0
            attn.in_proj_bias[offset + rows.start:offset + rows.stop] = 0.0
        attn.in_proj_weight[rows.start, QUERY] = 12.0  # query: "I am the EOT token"
        attn.in_proj_weight[d_model + rows.start, KEY] = 12.0  # key: "I am the cue slot"
        attn.in_proj_weight[2 * d_model + rows.start, CUE] = 1.0  # value: which word sits there
        attn.out_proj.weight[:, rows] = 0.0
        attn.out_proj.weight[[OUT, OUT_MIRROR], rows.start] = torch.tensor([1.0, -1.0])
        model.ln_final.weight.fill_(1.0)
        model.ln_final.bias.zero_()
        projection = model.text_projection
        projection.zero_()
        projection[CONTENT] = torch.randn(48, projection.shape[1], generator=g) * 0.1
        projection[OUT, 0] = 5.0
    return model.eval(), tokenizer


def image_features(n: int) -> torch.Tensor:
    """The planted "image": the axis of feature 0, for each of n pairs."""
    features = torch.zeros(n, 32)
    features[:, 0] = 1.0
    return features


def planted_pairs(n: int = 12) -> list[PatchPair]:
    """'a <c1> <s1> with a <c2> <s2>' (true) / '... without ...' (false), anchored on the negated caption."""
    pairs = []
    for i in range(n):
        subject = f"{COLOURS[i % 6]} {SHAPES[(i + i // 6) % 6]}"
        negated = f"{COLOURS[(i + 1) % 6]} {SHAPES[(i + i // 6 + 2) % 6]}"
        pairs.append(PatchPair("negation", f"a {subject} with a {negated}", f"a {subject} without a {negated}", None,
                               "without", negated, (subject,), anchor="false"))
    return pairs
