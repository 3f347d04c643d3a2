"""A uniform view of an open_clip text tower, and exact padding trimming.

open_clip keeps the text tower in two places depending on the model class: `CLIP` copies the
tower's modules onto the model itself, `CustomTextCLIP` keeps a `TextTransformer` at `model.text`.
`TextTower` points at the same module objects in both cases, so anything built on it (the hooked
encoder, the fine-tuning loop) trains the model's own parameters.

Trimming: with a causal mask, the state at the EOT position depends only on the tokens up to EOT.
Running a batch only up to its longest caption (with positional embeddings and mask sliced to
match) therefore gives the same pooled features as the full 77-token run, several times faster.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedTextTower(TypeError):
    """The model's text tower is not an open_clip transformer this toolkit can wrap."""


class TextTower:
    """References (not copies) to the modules of one open_clip text tower.

    Attributes are read from the owning module on every access, so the view stays valid after
    `model.to(device)` replaces buffers such as the causal mask.
    """

    def __init__(self, owner: nn.Module):
        self.owner = owner
        _check_blocks(owner.transformer.resblocks)
        self.pool_type = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", None)
        if self.pool_type not in ("argmax", "eos"):
            raise UnsupportedTextTower(
                f"text pooling {self.pool_type!r} is not supported: only EOT pooling ('argmax' or 'eos') "
                "gives the per-caption state that probing and trimming rely on"
            )
        if getattr(owner, "attn_mask", None) is None:
            raise UnsupportedTextTower(
                "text tower has no causal mask: EOT features would depend on padding, "
                "so trimming and EOT probing are not exact"
            )
        if getattr(owner, "cls_emb", None) is not None:
            raise UnsupportedTextTower("text towers with a CLS embedding (CoCa) are not supported")
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))

    @classmethod
    def from_model(cls, model: nn.Module) -> "TextTower":
        """Find the text tower of an open_clip `CLIP` or `CustomTextCLIP`; refuse anything else."""
        return cls(_text_tower_owner(model))

    # --- the tower's modules ------------------------------------------------------------------
    @property
    def token_embedding(self) -> nn.Embedding:
        return self.owner.token_embedding

    @property
    def positional_embedding(self) -> nn.Parameter:  # [n_ctx, d_model]
        return self.owner.positional_embedding

    @property
    def blocks(self) -> nn.ModuleList:
        return self.owner.transformer.resblocks

    @property
    def ln_final(self) -> nn.LayerNorm:
        return self.owner.ln_final

    @property
    def text_projection(self) -> nn.Parameter | nn.Linear | None:
        return self.owner.text_projection

    @property
    def attn_mask(self) -> torch.Tensor:  # [n_ctx, n_ctx], additive causal mask
        return self.owner.attn_mask

    # --- shapes -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def n_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def n_ctx(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def d_vocab(self) -> int:
        return self.token_embedding.num_embeddings

    # --- pooling and trimming -----------------------------------------------------------------
    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the pooled (EOT) token of each caption: [batch]."""
        if self.pool_type == "argmax":
            # EOT has the largest id in CLIP's BPE vocabulary; padding after it is 0, not EOT
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def trimmed_length(self, tokens: torch.Tensor) -> int:
        """Number of positions the batch needs: up to and including its latest EOT."""
        return int(self.eot_positions(tokens).max().item()) + 1

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Final projection of pooled, ln_final-ed states into the joint embedding space."""
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def encode(self, tokens: torch.Tensor, *, trim: bool = True, normalize: bool = False) -> torch.Tensor:
        """Same result as `model.encode_text(tokens)`, running only up to the longest caption."""
        length = self.trimmed_length(tokens) if trim else tokens.shape[1]
        tokens_in = tokens[:, :length]
        dtype = self.blocks[0].mlp.c_fc.weight.dtype
        x = self.token_embedding(tokens_in).to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = self.attn_mask[:length, :length].to(dtype)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self.eot_positions(tokens_in)]
        features = self.project(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def parameters_by_part(self) -> dict[str, list[nn.Parameter]]:
        """Parameters grouped as embeddings / blocks.{l} / ln_final / projection (for freezing)."""
        parts: dict[str, list[nn.Parameter]] = {
            "embeddings": [self.token_embedding.weight, self.positional_embedding],
        }
        for index, block in enumerate(self.blocks):
            parts[f"blocks.{index}"] = list(block.parameters())
        parts["ln_final"] = list(self.ln_final.parameters())
        if isinstance(self.text_projection, nn.Linear):
            parts["projection"] = list(self.text_projection.parameters())
        elif self.text_projection is not None:
            parts["projection"] = [self.text_projection]
        return parts


def _text_tower_owner(model: nn.Module) -> nn.Module:
    """The module that owns token_embedding / transformer / ln_final."""
    text = getattr(model, "text", None)
    if text is not None:
        if not hasattr(text, "transformer") or not hasattr(text.transformer, "resblocks"):
            raise UnsupportedTextTower(
                f"text tower {type(text).__name__} is not an open_clip TextTransformer "
                "(Hugging Face and timm text encoders cannot be wrapped)"
            )
        return text
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        return model
    raise UnsupportedTextTower(
        f"{type(model).__name__} has no open_clip text tower (expected CLIP or CustomTextCLIP)"
    )


def _check_blocks(blocks: nn.ModuleList) -> None:
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
            raise UnsupportedTextTower(
                f"block {index} ({type(block).__name__}) is not a standard open_clip "
                "ResidualAttentionBlock with nn.MultiheadAttention"
            )
        if not attn.batch_first:
            raise UnsupportedTextTower(f"block {index} attention is not batch-first")
        if attn.in_proj_weight is None:
            raise UnsupportedTextTower(f"block {index} uses separate q/k/v projection weights")
