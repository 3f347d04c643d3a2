"""HookedCLIPText: TransformerLens hook points over an open_clip text tower.

The wrapper re-expresses the tower's forward pass step by step so that every intermediate has a
`HookPoint` with TransformerLens's name, but it owns no weights: each submodule below holds a
reference to the open_clip module it wraps. Fine-tuning the hooked module therefore fine-tunes
the model, and `encode_text` matches `model.encode_text` to float precision.

What a TransformerLens user reaches for next works here too, in TransformerLens's shapes:
- weights: W_E [v, d], W_pos [n_ctx, d], and per block (stacked on the model as [n_layers, ...],
  per module on `blocks[l].attn` / `blocks[l].mlp`) W_Q/W_K/W_V [h, d, e], b_Q/b_K/b_V [h, e],
  W_O [h, e, d], b_O [d], W_in [d, m], b_in [m], W_out [m, d], b_out [d]. They are views computed
  from open_clip's packed weights (x @ W convention, LayerScale folded into W_O/b_O and W_out/b_out),
  so gradients flow into the model; writing to them changes nothing.
- `accumulated_bias`, `set_use_attn_result` (per-head `attn.hook_result`): with W_O they make
  ActivationCache.stack_head_results, get_full_resid_decomposition and friends work;
- `to_tokens(captions)`: tokens trimmed to the batch's longest caption, so that position indices
  of TransformerLens's patching functions match the (trimmed) activations; `eot_positions`;
- `forward(..., start_at_layer=, residual=, stop_at_layer=)`: run only some blocks, as in TransformerLens;
- mode: the wrapper starts in the mode of the model it wraps (eval for every model `load_clip`
  returns) and no helper of this package ever flips it (they use `eval_mode`, which restores every
  submodule's own flag). TransformerLens's patching refuses a model in training mode.

Shapes: batch b, positions p (trimmed to the batch's longest caption), heads h, d_head e,
d_model d, d_mlp m, vocabulary v.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from torch import nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from probing.clip.text_tower import TextTower, UnsupportedTextTower


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
    """nn.MultiheadAttention (self-attention, packed in_proj) with per-head hooks.

    The block's LayerScale (ls_1) is applied here, so that the output is exactly what the block adds
    to the residual stream and W_O / b_O include it: attn_out = sum_h z_h @ W_O[h] + b_O.
    """

    def __init__(self, attention: nn.MultiheadAttention, layer_scale: nn.Module):
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise UnsupportedTextTower("attention with bias_k/bias_v or add_zero_attn is not supported")
        self.mha = attention
        self.ls = layer_scale
        _layer_scale_gamma(layer_scale)  # refuse an unknown kind of layer scale now, not mid-analysis
        self.n_heads = attention.num_heads
        self.d_head = attention.head_dim
        self.use_attn_result = False
        self.hook_q = HookPoint()  # [b, p, h, e]
        self.hook_k = HookPoint()  # [b, p, h, e]
        self.hook_v = HookPoint()  # [b, p, h, e]
        self.hook_attn_scores = HookPoint()  # [b, h, p_query, p_key]
        self.hook_pattern = HookPoint()  # [b, h, p_query, p_key]
        self.hook_z = HookPoint()  # [b, p, h, e]
        self.hook_result = HookPoint()  # [b, p, h, d], only with use_attn_result

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, positions, d_model = x.shape
        qkv = F.linear(x, self.mha.in_proj_weight, self.mha.in_proj_bias)
        q, k, v = (t.reshape(batch, positions, self.n_heads, self.d_head) for t in qkv.chunk(3, dim=-1))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.d_head) + mask
        pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
        pattern = F.dropout(pattern, p=self.mha.dropout, training=self.training)
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        if self.use_attn_result:
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        return self.ls(self.mha.out_proj(z.reshape(batch, positions, d_model)))

    def _in_weight(self, index: int) -> torch.Tensor:  # [h, d, e]
        weight = self.mha.in_proj_weight.chunk(3)[index]  # [h * e, d], rows head-major
        return weight.T.reshape(-1, self.n_heads, self.d_head).permute(1, 0, 2)

    def _in_bias(self, index: int) -> torch.Tensor:  # [h, e]
        bias = self.mha.in_proj_bias
        if bias is None:
            return self.mha.in_proj_weight.new_zeros(self.n_heads, self.d_head)
        return bias.chunk(3)[index].reshape(self.n_heads, self.d_head)

    W_Q = property(lambda self: self._in_weight(0), doc="[h, d, e]: q = x @ W_Q[h] + b_Q[h]")
    W_K = property(lambda self: self._in_weight(1), doc="[h, d, e]")
    W_V = property(lambda self: self._in_weight(2), doc="[h, d, e]")
    b_Q = property(lambda self: self._in_bias(0), doc="[h, e]")
    b_K = property(lambda self: self._in_bias(1), doc="[h, e]")
    b_V = property(lambda self: self._in_bias(2), doc="[h, e]")

    @property
    def W_O(self) -> torch.Tensor:
        """[h, e, d]: head h adds z_h @ W_O[h] to the residual stream (LayerScale included)."""
        weight = self.mha.out_proj.weight.T  # [h * e, d]
        return (weight * _layer_scale_gamma(self.ls, weight)).reshape(self.n_heads, self.d_head, -1)

    @property
    def b_O(self) -> torch.Tensor:
        """[d] (LayerScale included)."""
        bias = _bias(self.mha.out_proj)
        return bias * _layer_scale_gamma(self.ls, bias)


class HookedMLP(nn.Module):
    """open_clip's MLP (c_fc -> activation -> c_proj) and the block's LayerScale (ls_2), with
    TransformerLens's pre/post hooks: mlp_out = post @ W_out + b_out."""

    def __init__(self, mlp: nn.Sequential, layer_scale: nn.Module):
        super().__init__()
        self.mlp = mlp
        self.ls = layer_scale
        _layer_scale_gamma(layer_scale)
        self.hook_pre = HookPoint()  # [b, p, m]
        self.hook_post = HookPoint()  # [b, p, m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_pre(self.mlp.c_fc(x))
        x = self.hook_post(self.mlp.gelu(x))
        for module in self._between_post_and_c_proj():
            x = module(x)  # e.g. a LayerNorm some variants put before c_proj
        return self.ls(self.mlp.c_proj(x))

    def _between_post_and_c_proj(self) -> list[nn.Module]:
        return [module for name, module in self.mlp.named_children() if name not in ("c_fc", "gelu", "c_proj")]

    W_in = property(lambda self: self.mlp.c_fc.weight.T, doc="[d, m]")
    b_in = property(lambda self: _bias(self.mlp.c_fc), doc="[m]")

    @property
    def W_out(self) -> torch.Tensor:
        """[m, d] (LayerScale included); only defined when c_proj reads hook_post directly."""
        if self._between_post_and_c_proj():
            raise UnsupportedTextTower("this MLP transforms its activations before c_proj: W_out would not give "
                                       "the contribution of hook_post's neurons")
        weight = self.mlp.c_proj.weight.T
        return weight * _layer_scale_gamma(self.ls, weight)

    @property
    def b_out(self) -> torch.Tensor:
        bias = _bias(self.mlp.c_proj)
        return bias * _layer_scale_gamma(self.ls, bias)


class HookedBlock(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.ln1 = HookedLayerNorm(block.ln_1)
        self.attn = HookedAttention(block.attn, block.ls_1)
        self.ln2 = HookedLayerNorm(block.ln_2)
        self.mlp = HookedMLP(block.mlp, block.ls_2)
        self.hook_resid_pre = HookPoint()  # [b, p, d]
        self.hook_attn_out = HookPoint()  # [b, p, d]
        self.hook_resid_mid = HookPoint()  # [b, p, d]
        self.hook_mlp_out = HookPoint()  # [b, p, d]
        self.hook_resid_post = HookPoint()  # [b, p, d]

    def forward(self, resid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), mask))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)


class HookedCLIPText(HookedRootModule):
    """TransformerLens view of an open_clip model's text tower; shares every parameter with it.

    >>> hooked = HookedCLIPText(model)
    >>> features, cache = hooked.run_with_cache(tokens)
    >>> cache["blocks.3.hook_resid_post"].shape   # [batch, trimmed positions, d_model]
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None):
        """tokenizer: what `to_tokens` uses; default open_clip's SimpleTokenizer at the tower's context length."""
        super().__init__()
        self.tower = TextTower.from_model(model)
        self.tokenizer = tokenizer
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
        # the wrapper's own modules take the wrapped tower's mode; the shared open_clip modules keep theirs
        shared = {id(module) for module in tower.owner.modules()}
        for module in self.modules():
            if id(module) not in shared:
                module.training = tower.owner.training

    def forward(
        self, tokens: torch.Tensor, *, trim: bool = True, normalize: bool = False,
        start_at_layer: int | None = None, residual: torch.Tensor | None = None, stop_at_layer: int | None = None,
    ) -> torch.Tensor:
        """Text features [b, embed_dim], equal to `model.encode_text(tokens)`.

        As in TransformerLens, `stop_at_layer=l` returns the residual stream entering block l
        ([b, p, d], p the trimmed length) instead, and `start_at_layer=l` runs blocks l, l + 1, ...
        on `residual`, the stream entering block l (l = n_layers: only the final LayerNorm and
        projection). A patch or steering vector at block l thus reruns only the blocks after it.
        """
        tower = self.tower
        length = tower.trimmed_length(tokens) if trim else tokens.shape[1]
        tokens = tokens[:, :length]
        dtype = self.positional_embedding.dtype
        mask = tower.attn_mask[:length, :length].to(device=tokens.device, dtype=dtype)
        if start_at_layer is None:
            embed = self.hook_embed(self.token_embedding(tokens).to(dtype))
            pos_embed = self.hook_pos_embed(self.positional_embedding[:length].expand(tokens.shape[0], -1, -1))
            resid, start_at_layer = embed + pos_embed, 0
        elif residual is None or residual.shape[:2] != tokens.shape:
            raise ValueError(f"start_at_layer needs the residual stream [batch, {length}, d_model] entering that block")
        else:
            resid = residual
        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid, mask)
        if stop_at_layer is not None:
            return resid
        final = self.ln_final(resid)
        pooled = final[torch.arange(final.shape[0], device=final.device), tower.eot_positions(tokens)]
        features = tower.project(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def run_with_cache(self, *model_args, return_cache_object: bool = True, **kwargs):
        """As HookedRootModule.run_with_cache, but the cache is a real `ActivationCache`."""

        output, cache_dict = super().run_with_cache(*model_args, **kwargs)
        if not return_cache_object:
            return output, cache_dict
        return output, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))

    def encode_text(self, tokens: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        return self(tokens, normalize=normalize)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of each caption's EOT token (the pooled position): [b]."""
        return self.tower.eot_positions(tokens)

    def to_tokens(self, captions: str | Sequence[str], *, move_to_device: bool = True) -> torch.Tensor:
        """Tokens [b, p] trimmed to the batch's longest caption (EOT included), as the activations are."""
        if self.tokenizer is None:
            self.tokenizer = SimpleTokenizer(context_length=self.cfg.n_ctx)
        tokens = self.tokenizer([captions] if isinstance(captions, str) else list(captions))
        tokens = tokens[:, :self.tower.trimmed_length(tokens)]
        return tokens.to(self.positional_embedding.device) if move_to_device else tokens

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute each head's residual contribution explicitly at `blocks.{l}.attn.hook_result` [b, p, h, d]."""
        self.cfg.use_attn_result = use_attn_result
        for block in self.blocks:
            block.attn.use_attn_result = use_attn_result

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """[d]: the attention (and MLP) output biases of blocks before `layer` (+ block `layer`'s
        attention bias with mlp_input), as TransformerLens defines it for residual decompositions."""
        total = self.positional_embedding.new_zeros(self.cfg.d_model)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O + (block.mlp.b_out if include_mlp_biases else 0)
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O
        return total

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    W_E = property(lambda self: self.token_embedding.weight, doc="[v, d]")
    W_pos = property(lambda self: self.positional_embedding, doc="[n_ctx, d]")

    def _stack(self, part: str, name: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    W_Q = property(lambda self: self._stack("attn", "W_Q"), doc="[n_layers, h, d, e]")
    W_K = property(lambda self: self._stack("attn", "W_K"), doc="[n_layers, h, d, e]")
    W_V = property(lambda self: self._stack("attn", "W_V"), doc="[n_layers, h, d, e]")
    W_O = property(lambda self: self._stack("attn", "W_O"), doc="[n_layers, h, e, d]")
    b_Q = property(lambda self: self._stack("attn", "b_Q"), doc="[n_layers, h, e]")
    b_K = property(lambda self: self._stack("attn", "b_K"), doc="[n_layers, h, e]")
    b_V = property(lambda self: self._stack("attn", "b_V"), doc="[n_layers, h, e]")
    b_O = property(lambda self: self._stack("attn", "b_O"), doc="[n_layers, d]")
    W_in = property(lambda self: self._stack("mlp", "W_in"), doc="[n_layers, d, m]")
    b_in = property(lambda self: self._stack("mlp", "b_in"), doc="[n_layers, m]")
    W_out = property(lambda self: self._stack("mlp", "W_out"), doc="[n_layers, m, d]")
    b_out = property(lambda self: self._stack("mlp", "b_out"), doc="[n_layers, d]")


def _layer_scale_gamma(layer_scale: nn.Module, like: torch.Tensor | None = None) -> torch.Tensor | float:
    """The per-channel factor of open_clip's LayerScale (1 for nn.Identity)."""
    if isinstance(layer_scale, nn.Identity):
        return 1.0
    gamma = getattr(layer_scale, "gamma", None)
    if not isinstance(gamma, torch.Tensor):
        raise UnsupportedTextTower(f"unknown layer scale {type(layer_scale).__name__}: expected Identity or LayerScale")
    return gamma if like is None else gamma.to(like.dtype)


def _bias(linear: nn.Linear) -> torch.Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.weight.shape[0])


def _activation_name(module: nn.Module) -> str:
    name = type(module).__name__
    return {"QuickGELU": "quick_gelu", "GELU": "gelu"}.get(name, name.lower())
