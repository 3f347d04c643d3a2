"""HookedCLIPText: same numbers as open_clip, real ActivationCache, exact trimming, gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from probing.models.hooked import HookedCLIPText
from probing.models.loading import load_clip
from probing.models.text_tower import TextTower, UnsupportedTextTower

CAPTIONS = [
    "a dog",
    "a red circle but no blue square",
    "there is no green star next to the purple cross and the small yellow diamond",
    "not a photo of a cat",
]


def _model(write_config, name, **kwargs):
    torch.manual_seed(0)
    model, _, tokenizer = load_clip(write_config(name, **kwargs))
    return model, tokenizer(CAPTIONS)


@pytest.mark.parametrize("kwargs", [dict(quick_gelu=False), dict(quick_gelu=True), dict(text_width=96, heads=3)],
                         ids=["gelu", "quickgelu", "width96"])
def test_encode_text_matches_open_clip(write_config, kwargs):
    model, tokens = _model(write_config, "tiny-eq", **kwargs)
    hooked = HookedCLIPText(model)
    expected = model.encode_text(tokens)
    assert torch.allclose(hooked.encode_text(tokens), expected, atol=1e-5)
    seen = []
    hooked.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: seen.append(x.shape))])
    _, cache = hooked.run_with_cache(tokens)
    assert seen and torch.allclose(hooked.encode_text(tokens), expected, atol=1e-5)
    # a hook that rewrites activations must change the output: the hooks are really on the path
    changed = hooked.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * 0)])
    assert not torch.allclose(changed, expected, atol=1e-3)


def test_real_vit_b_32_text_tower_matches():
    torch.manual_seed(0)
    model, _, tokenizer = load_clip("ViT-B-32")  # width 512, GELU, 12 blocks, random weights
    tokens = tokenizer(CAPTIONS)
    hooked = HookedCLIPText(model)
    assert hooked.cfg.n_layers == 12 and hooked.cfg.d_model == 512 and hooked.cfg.n_heads == 8
    assert torch.allclose(hooked.encode_text(tokens), model.encode_text(tokens), atol=1e-5)


def test_hooked_module_shares_parameters(write_config):
    model, tokens = _model(write_config, "tiny-share")
    hooked = HookedCLIPText(model)
    model_params = {id(p) for p in model.parameters()}
    assert all(id(p) in model_params for p in hooked.parameters())
    with torch.no_grad():
        model.transformer.resblocks[2].mlp.c_proj.weight.add_(0.5)  # edit the model ...
    assert torch.allclose(hooked.encode_text(tokens), model.encode_text(tokens), atol=1e-5)  # ... hooked sees it


def test_trimming_is_exact(write_config):
    model, tokens = _model(write_config, "tiny-trim")
    hooked = HookedCLIPText(model)
    full = hooked(tokens, trim=False)
    trimmed = hooked(tokens, trim=True)
    assert tokens.shape[1] == 32 and hooked.tower.trimmed_length(tokens) < 32
    assert torch.allclose(full, trimmed, atol=1e-5)
    assert torch.allclose(TextTower.from_model(model).encode(tokens), full, atol=1e-5)
    _, cache = hooked.run_with_cache(tokens)
    assert cache["blocks.0.hook_resid_pre"].shape[1] == hooked.tower.trimmed_length(tokens)


def test_activation_cache_helpers(write_config):
    model, tokens = _model(write_config, "tiny-cache")
    hooked = HookedCLIPText(model)
    _, cache = hooked.run_with_cache(tokens)
    from transformer_lens import ActivationCache

    assert isinstance(cache, ActivationCache)
    n = hooked.cfg.n_layers
    for name in ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "blocks.0.attn.hook_pattern",
                 "blocks.0.attn.hook_q", "blocks.0.attn.hook_z", "blocks.0.ln1.hook_scale",
                 "blocks.0.ln2.hook_scale", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out",
                 "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_post"]:
        assert name in cache.cache_dict, name
    assert cache["blocks.0.attn.hook_pattern"].shape[1] == hooked.cfg.n_heads
    accumulated = cache.accumulated_resid()
    assert accumulated.shape[0] == n + 1
    assert torch.equal(accumulated[-1], cache[f"blocks.{n - 1}.hook_resid_post"])
    components = cache.decompose_resid()  # embed, pos_embed, attn_out and mlp_out of every block
    assert components.shape[0] == 2 + 2 * n
    assert torch.allclose(components.sum(0), cache[f"blocks.{n - 1}.hook_resid_post"], atol=1e-4)
    # apply_ln_to_stack with the cached final scale reproduces ln_final's normalisation
    normalized = cache.apply_ln_to_stack(accumulated[-1:], layer=None)[0]
    assert torch.allclose(normalized, cache["ln_final.hook_normalized"], atol=1e-4)
    # attention patterns are causal and sum to one
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), atol=1e-5)
    assert pattern[..., 0, 1:].abs().max() == 0


def test_gradients_match_and_backward_hooks_fire(write_config):
    model, tokens = _model(write_config, "tiny-grad")
    hooked = HookedCLIPText(model)
    weight = model.transformer.resblocks[0].attn.in_proj_weight

    model.encode_text(tokens).pow(2).sum().backward()
    expected = weight.grad.clone()
    model.zero_grad()

    grads = []
    hooked.add_hook("blocks.1.hook_resid_post", lambda grad, hook: grads.append(grad[0].detach()), dir="bwd")
    hooked(tokens).pow(2).sum().backward()
    hooked.reset_hooks()
    assert torch.allclose(weight.grad, expected, atol=1e-4)
    assert len(grads) == 1 and grads[0].abs().sum() > 0


def test_hugging_face_text_tower_is_refused(write_config):
    model, _ = _model(write_config, "tiny-custom", )
    class FakeCustomTextCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = nn.Linear(4, 4)  # stands in for an HFTextEncoder
    with pytest.raises(UnsupportedTextTower, match="not an open_clip TextTransformer"):
        HookedCLIPText(FakeCustomTextCLIP())
    with pytest.raises(UnsupportedTextTower, match="no open_clip text tower"):
        HookedCLIPText(nn.Linear(2, 2))


def test_custom_text_clip_tower_is_wrapped(write_config):
    """CustomTextCLIP keeps the tower at model.text; the wrapper must find it there."""
    from open_clip.model import CustomTextCLIP
    from tests.conftest import tiny_config

    config = tiny_config()
    torch.manual_seed(0)
    model = CustomTextCLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"]).eval()
    tokens = torch.zeros(2, 32, dtype=torch.long)
    tokens[:, 0], tokens[0, 1:4], tokens[0, 4], tokens[1, 1] = 49406, 320, 49407, 49407
    assert torch.allclose(HookedCLIPText(model).encode_text(tokens), model.encode_text(tokens), atol=1e-5)


def test_non_eot_pooling_is_refused(write_config):
    model, _, _ = load_clip(write_config("tiny-last", pool_type="last", no_causal_mask=True))
    with pytest.raises(UnsupportedTextTower, match="pooling 'last'"):
        HookedCLIPText(model)
