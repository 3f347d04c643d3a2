"""HookedCLIPText: same numbers as open_clip, real ActivationCache, exact trimming, gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from probing.clip.hooked import HookedCLIPText
from probing.clip.loading import load_clip
from probing.clip.text_tower import TextTower, UnsupportedTextTower

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
    resid = []  # the residual stream open_clip hands to ln_final
    model.ln_final.register_forward_pre_hook(lambda module, inputs: resid.append(inputs[0].detach()))
    with torch.no_grad():
        before = model.encode_text(tokens)
        # edit the model: one output dimension of an MLP (adding the same amount to every weight, as this test once
        # did, shifts every dimension of the residual stream alike, which the LayerNorms remove again: that edit
        # changed the output by less than float rounding, so a hooked model blind to it passed too)
        model.transformer.resblocks[2].mlp.c_proj.weight[0].add_(0.5)
        resid.clear()
        expected, seen = model.encode_text(tokens), hooked.encode_text(tokens)  # ... hooked sees it
    # The tolerance from the magnitudes at hand: float32 rounding is relative to the residual stream's largest
    # entries (eps * max|resid|, here grown by the edit), ln_final divides it by the stream's spread (its scale),
    # and the projection sums d_model such terms into outputs of size max|out|. HookedCLIPText sums in another
    # order (q, k, v per head), so the two differ by up to that; a fixed atol of 1e-5 sat at the bound on one
    # CPU and below it on another.
    (resid,) = resid
    spread = (resid.var(dim=-1, unbiased=False, keepdim=True) + model.ln_final.eps).sqrt()  # LayerNorm's scale
    amplification = float((resid.abs().amax(dim=-1, keepdim=True) / spread).max())
    tolerance = hooked.cfg.d_model * torch.finfo(torch.float32).eps * amplification * float(expected.abs().max())
    assert float((expected - before).abs().max()) > 100 * tolerance  # the edit shows far above the tolerance
    assert torch.allclose(seen, expected, rtol=0, atol=tolerance), (float((seen - expected).abs().max()), tolerance)


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


# ---- what a TransformerLens user tries next ------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(), dict(ls_init_value=0.3)], ids=["plain", "layerscale"])
def test_weight_properties_reproduce_the_hooks(write_config, kwargs):
    """W_Q/K/V/O, b_*, W_in/W_out in TransformerLens's shapes give back the cached activations."""
    model, tokens = _model(write_config, "tiny-weights", **kwargs)
    hooked = HookedCLIPText(model)
    n, h, d, e = hooked.cfg.n_layers, hooked.cfg.n_heads, hooked.cfg.d_model, hooked.cfg.d_head
    m = hooked.cfg.d_mlp
    assert hooked.W_Q.shape == hooked.W_K.shape == hooked.W_V.shape == (n, h, d, e)
    assert hooked.W_O.shape == (n, h, e, d) and hooked.b_O.shape == (n, d) and hooked.b_Q.shape == (n, h, e)
    assert hooked.W_in.shape == (n, d, m) and hooked.W_out.shape == (n, m, d) and hooked.b_out.shape == (n, d)
    assert hooked.W_E.shape == (hooked.cfg.d_vocab, d) and hooked.W_pos.shape == (hooked.cfg.n_ctx, d)
    _, cache = hooked.run_with_cache(tokens)
    for l, block in enumerate(hooked.blocks):
        x = block.ln1(cache[f"blocks.{l}.hook_resid_pre"])
        for name, W, b in (("q", hooked.W_Q, hooked.b_Q), ("k", hooked.W_K, hooked.b_K), ("v", hooked.W_V, hooked.b_V)):
            expected = cache[f"blocks.{l}.attn.hook_{name}"]
            assert torch.allclose(torch.einsum("bpd,hde->bphe", x, W[l]) + b[l], expected, atol=1e-5)
        attn_out = torch.einsum("bphe,hed->bpd", cache[f"blocks.{l}.attn.hook_z"], hooked.W_O[l]) + hooked.b_O[l]
        assert torch.allclose(attn_out, cache[f"blocks.{l}.hook_attn_out"], atol=1e-5)
        x2 = block.ln2(cache[f"blocks.{l}.hook_resid_mid"])
        assert torch.allclose(x2 @ hooked.W_in[l] + hooked.b_in[l], cache[f"blocks.{l}.mlp.hook_pre"], atol=1e-5)
        mlp_out = cache[f"blocks.{l}.mlp.hook_post"] @ hooked.W_out[l] + hooked.b_out[l]
        assert torch.allclose(mlp_out, cache[f"blocks.{l}.hook_mlp_out"], atol=1e-5)
    if kwargs:  # LayerScale is folded in: without it the output weights would not match
        gamma = model.transformer.resblocks[0].ls_1.gamma
        out_proj = model.transformer.resblocks[0].attn.out_proj.weight
        assert torch.allclose(hooked.W_O[0], out_proj.T.reshape(h, e, d) * gamma)


def test_transformer_lens_decompositions_run(write_config):
    model, tokens = _model(write_config, "tiny-decompose", ls_init_value=0.5)
    hooked = HookedCLIPText(model)
    n = hooked.cfg.n_layers
    _, cache = hooked.run_with_cache(tokens)
    final = cache[f"blocks.{n - 1}.hook_resid_post"]
    heads, labels = cache.stack_head_results(return_labels=True)
    assert heads.shape[0] == n * hooked.cfg.n_heads and labels[:2] == ["L0H0", "L0H1"]
    attn_total = sum(cache[f"blocks.{l}.hook_attn_out"] for l in range(n))
    assert torch.allclose(heads.sum(0) + hooked.b_O.sum(0), attn_total, atol=1e-4)
    for expand_neurons in (True, False):
        parts, labels = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, return_labels=True)
        assert labels[-3:] == ["embed", "pos_embed", "bias"]
        assert torch.allclose(parts.sum(0), final, atol=1e-4)
    projected = cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=False,
                                                   project_output_onto=hooked.tower.text_projection)
    eot = hooked.eot_positions(tokens)
    features = projected.sum(0)[torch.arange(len(tokens)), eot]  # direct attribution sums to the features
    assert torch.allclose(features, hooked(tokens), atol=1e-4)
    hooked.set_use_attn_result(True)
    features_with_results, cache = hooked.run_with_cache(tokens)
    assert cache["blocks.1.attn.hook_result"].shape[-2:] == (hooked.cfg.n_heads, hooked.cfg.d_model)
    assert torch.allclose(features_with_results, model.encode_text(tokens), atol=1e-5)


def test_transformer_lens_patching_runs_on_to_tokens(write_config):
    from transformer_lens import patching

    model, _ = _model(write_config, "tiny-tl-patch")
    hooked = HookedCLIPText(model)
    clean = hooked.to_tokens(["a red circle but a blue square", "a dog and a cat"])
    corrupted = hooked.to_tokens(["a red circle but no blue square", "a dog and no cat"])
    assert clean.shape == corrupted.shape == (2, 9)  # trimmed: the tokenizer gives 32 positions
    assert torch.equal(hooked.eot_positions(clean), torch.tensor([8, 6]))
    _, clean_cache = hooked.run_with_cache(clean)
    metric = lambda features: features[:, 0].sum()
    resid = patching.get_act_patch_resid_pre(hooked, corrupted, clean_cache, metric)
    heads = patching.get_act_patch_attn_head_out_all_pos(hooked, corrupted, clean_cache, metric)
    assert resid.shape == (hooked.cfg.n_layers, 9) and heads.shape == (hooked.cfg.n_layers, hooked.cfg.n_heads)
    # one cell by hand: position 5 ("no" / "a") at block 2's input
    def patch(resid_pre, hook):
        resid_pre = resid_pre.clone()
        resid_pre[:, 5] = clean_cache["blocks.2.hook_resid_pre"][:, 5]
        return resid_pre
    with torch.no_grad():
        by_hand = metric(hooked.run_with_hooks(corrupted, fwd_hooks=[("blocks.2.hook_resid_pre", patch)]))
    assert resid[2, 5] == pytest.approx(float(by_hand), abs=1e-5)


def test_start_and_stop_at_layer_compose_to_the_full_run(write_config):
    model, tokens = _model(write_config, "tiny-start-stop")
    hooked = HookedCLIPText(model)
    full = hooked(tokens)
    for layer in range(hooked.cfg.n_layers + 1):
        stream = hooked(tokens, stop_at_layer=layer)
        assert stream.shape == (len(tokens), hooked.tower.trimmed_length(tokens), hooked.cfg.d_model)
        assert torch.allclose(hooked(tokens, start_at_layer=layer, residual=stream), full, atol=1e-6)
    with pytest.raises(ValueError, match="residual stream"):
        hooked(tokens, start_at_layer=1)


def test_the_wrapper_takes_the_model_mode_and_helpers_never_change_it(write_config):
    from transformer_lens.tools.analysis._model_state import require_eval_mode

    from probing.measure.capture import capture_pooled

    model, _, tokenizer = load_clip(write_config("tiny-mode"))
    hooked = HookedCLIPText(model)
    assert not any(m.training for m in hooked.modules())
    require_eval_mode(hooked, operation="patching")  # what TransformerLens's patching checks
    model.train()
    model.transformer.resblocks[1].eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    hooked = HookedCLIPText(model)
    assert hooked.training and hooked.blocks[0].attn.training
    capture_pooled(hooked, tokenizer, CAPTIONS, progress=False)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert hooked.training
