"""HookedCLIPText: TransformerLens hook points over an open_clip text tower.

The wrapper re-expresses the tower's forward pass step by step so that every intermediate has a
`HookPoint` with TransformerLens's name, but it owns no weights: each submodule below holds a
reference to the open_clip module it wraps. Fine-tuning the hooked module therefore fine-tunes
the model, and `encode_text` matches `model.encode_text` to float precision.

Shapes: batch b, positions p (trimmed to the batch's longest caption), heads h, d_head e,
d_model d, d_mlp m.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from probing.models.text_tower import TextTower, UnsupportedTextTower


class HookedLayerNorm(nn.Module):
    """LayerNorm with `hook_scale` and `hook_normalized`, computed as TransformerLens does."""

    def __init__(self, layer_norm: nn.LayerNorm):
        super().__init__()
        if not isinstance(layer_norm, nn.LayerNorm):
            raise UnsupportedTextTower(f"expected a LayerNorm, got {type(layer_norm).__name__}")
        self.ln = layer_norm
        self.hook_scale = HookPoint()  # [b, p, 1]
        self.hook_normalized = HookPoint()  # [b, p, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_dtype = x.dtype
        x = x.float()  # open_clip's LayerNorm also normalises in float32
        x = x - x.mean(dim=-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(dim=-1, keepdim=True) + self.ln.eps).sqrt())
        x = self.hook_normalized(x / scale)
        if self.ln.weight is not None:
            x = x * self.ln.weight.float() + self.ln.bias.float()
        return x.to(orig_dtype)


class HookedAttention(nn.Module):
    """nn.MultiheadAttention (self-attention, packed in_proj) with per-head hooks."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise UnsupportedTextTower("attention with bias_k/bias_v or add_zero_attn is not supported")
        self.mha = attention
        self.n_heads = attention.num_heads
        self.d_head = attention.head_dim
        self.hook_q = HookPoint()  # [b, p, h, e]
        self.hook_k = HookPoint()  # [b, p, h, e]
        self.hook_v = HookPoint()  # [b, p, h, e]
        self.hook_attn_scores = HookPoint()  # [b, h, p_query, p_key]
        self.hook_pattern = HookPoint()  # [b, h, p_query, p_key]
        self.hook_z = HookPoint()  # [b, p, h, e]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, positions, d_model = x.shape
        qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias)
        q, k, v = (t.reshape(batch, positions, self.n_heads, self.d_head) for t in qkv.chunk(3, dim=-1))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.d_head) + mask
        pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
        pattern = F.dropout(pattern, p=self.mha.dropout, training=self.training)
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return self.mha.out_proj(z.reshape(batch, positions, d_model))


class HookedMLP(nn.Module):
    """open_clip's MLP (c_fc -> activation -> c_proj) with TransformerLens's pre/post hooks."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.mlp = mlp
        self.hook_pre = HookPoint()  # [b, p, m]
        self.hook_post = HookPoint()  # [b, p, m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_pre(self.mlp.c_fc(x))
        x = self.hook_post(self.mlp.gelu(x))
        for name, module in self.mlp.named_children():
            if name not in ("c_fc", "gelu", "c_proj"):
                x = module(x)  # e.g. a LayerNorm some variants put before c_proj
        return self.mlp.c_proj(x)


class HookedBlock(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.ln1 = HookedLayerNorm(block.ln_1)
        self.attn = HookedAttention(block.attn)
        self.ls_1 = block.ls_1
        self.ln2 = HookedLayerNorm(block.ln_2)
        self.mlp = HookedMLP(block.mlp)
        self.ls_2 = block.ls_2
        self.hook_resid_pre = HookPoint()  # [b, p, d]
        self.hook_attn_out = HookPoint()  # [b, p, d]
        self.hook_resid_mid = HookPoint()  # [b, p, d]
        self.hook_mlp_out = HookPoint()  # [b, p, d]
        self.hook_resid_post = HookPoint()  # [b, p, d]

    def forward(self, resid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.ls_1(self.attn(self.ln1(resid), mask)))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.ls_2(self.mlp(self.ln2(resid))))
        return self.hook_resid_post(resid + mlp_out)


class HookedCLIPText(HookedRootModule):
    """TransformerLens view of an open_clip model's text tower; shares every parameter with it.

    >>> hooked = HookedCLIPText(model)
    >>> features, cache = hooked.run_with_cache(tokens)
    >>> cache["blocks.3.hook_resid_post"].shape   # [batch, trimmed positions, d_model]
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.tower = TextTower.from_model(model)
        tower = self.tower
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.blocks = nn.ModuleList(HookedBlock(block) for block in tower.blocks)
        self.ln_final = HookedLayerNorm(tower.ln_final)
        self.text_projection = tower.text_projection
        self.hook_embed = HookPoint()  # [b, p, d]
        self.hook_pos_embed = HookPoint()  # [b, p, d]
        self.cfg = TransformerLensConfig(
            d_model=tower.d_model,
            d_head=tower.d_model // tower.n_heads,
            n_layers=tower.n_layers,
            n_ctx=tower.n_ctx,
            n_heads=tower.n_heads,
            d_mlp=tower.blocks[0].mlp.c_fc.out_features,
            d_vocab=tower.d_vocab,
            act_fn=_activation_name(tower.blocks[0].mlp.gelu),
            normalization_type="LN",
            device=str(tower.positional_embedding.device),
        )
        self.setup()

    def forward(
        self, tokens: torch.Tensor, *, trim: bool = True, normalize: bool = False
    ) -> torch.Tensor:
        """Text features [b, embed_dim], equal to `model.encode_text(tokens)`."""
        tower = self.tower
        length = tower.trimmed_length(tokens) if trim else tokens.shape[1]
        tokens = tokens[:, :length]
        dtype = self.positional_embedding.dtype
        embed = self.hook_embed(self.token_embedding(tokens).to(dtype))
        pos_embed = self.hook_pos_embed(self.positional_embedding[:length].expand(tokens.shape[0], -1, -1))
        mask = tower.attn_mask[:length, :length].to(device=embed.device, dtype=dtype)
        resid = embed + pos_embed
        for block in self.blocks:
            resid = block(resid, mask)
        final = self.ln_final(resid)
        pooled = final[torch.arange(final.shape[0], device=final.device), tower.eot_positions(tokens)]
        features = tower.project(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def run_with_cache(self, *model_args, return_cache_object: bool = True, **kwargs):
        """As HookedRootModule.run_with_cache, but the cache is a real `ActivationCache`."""
        from transformer_lens import ActivationCache

        output, cache_dict = super().run_with_cache(*model_args, **kwargs)
        if not return_cache_object:
            return output, cache_dict
        return output, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))

    def encode_text(self, tokens: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        return self(tokens, normalize=normalize)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.eot_positions(tokens)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers


def _activation_name(module: nn.Module) -> str:
    name = type(module).__name__
    return {"QuickGELU": "quick_gelu", "GELU": "gelu"}.get(name, name.lower())
