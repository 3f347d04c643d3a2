"""Hugging Face CLIPModel checkpoints: converted models compute what transformers computes.

Two random transformers CLIPModels of different sizes (QuickGELU and GELU, different widths, heads,
layers, projection dims, context lengths, LayerNorm eps) are saved as transformers saves them and loaded
through create_model / load_clip; text features, image features and every layer's residual stream are
compared with transformers' own forward pass. Every parameter is perturbed after transformers' init
(which sets LayerNorm weights to 1 and biases to 0), so a swapped or misplaced tensor changes the output.
"""
from __future__ import annotations

import json
import shutil
import sys
import warnings

import pytest
import torch

from probing.clip.hooked import HookedCLIPText
from probing.clip.huggingface import EOT_ID
from probing.clip.loading import ModelLoadError, base_record, load_clip, save_clip_checkpoint
from probing.models.factory import create_model

transformers = pytest.importorskip("transformers")  # the `hf` extra; CI installs it with the `test` extra

# Real captions of different lengths (NegBench COCO negated retrieval, shared/data/negbench/
# COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv, images 397133, 37777 and 87038).
CAPTIONS = [
    "A man in a kitchen is making pizzas, but there is no chair in sight.",
    "The kitchen is clean and empty, with no person in sight.",
    "No cup can be seen; however, the dining table near the kitchen is set with a bowl of fruit.",
    "At the table, pies are being crafted, while a person stands by a wall adorned with pots and pans, "
    "and noticeably, there's no fork.",
    "No car is in sight as a skateboarder jumps into the air, performing a trick on his board.",
]

SIZES = {
    # QuickGELU (as OpenAI's CLIP), saved by save_pretrained as model.safetensors, 77 positions
    "quickgelu": dict(
        projection_dim=24,
        text_config=dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=96,
                         max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=128,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
    ),
    # GELU, LayerNorm eps 1e-6, 28 positions (the longest caption, 34 tokens, is truncated), saved as pytorch_model.bin
    "gelu": dict(
        projection_dim=16,
        text_config=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                         max_position_embeddings=28, hidden_act="gelu", layer_norm_eps=1e-6),
        vision_config=dict(hidden_size=40, num_attention_heads=5, num_hidden_layers=1, intermediate_size=100,
                           image_size=48, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6),
    ),
}
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # float32; the features are of order 1
# HookedCLIPText recomputes attention step by step (its own summation order): float32 rounding of states of order 1
RESIDUAL_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def random_clip(size: str, seed: int = 0):
    """A transformers CLIPModel of SIZES[size] with every parameter perturbed away from its init."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(**SIZES[size])).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def save_as_bin(model, folder) -> None:
    """What transformers 4.x wrote with save_pretrained(safe_serialization=False) (transformers 5 writes only
    safetensors): config.json and a torch.save'd state dict, with the position_ids buffers it then saved."""
    model.config.save_pretrained(folder)
    state = dict(model.state_dict())
    for tower in ("text_model", "vision_model"):
        state[f"{tower}.embeddings.position_ids"] = getattr(model, tower).embeddings.position_ids.clone()
    torch.save(state, folder / "pytorch_model.bin")


@pytest.fixture(scope="module", params=sorted(SIZES))
def checkpoint(request, tmp_path_factory):
    """(transformers model, its saved folder)."""
    model = random_clip(request.param)
    folder = tmp_path_factory.mktemp(f"hf-{request.param}")
    if request.param == "gelu":
        save_as_bin(model, folder)
    else:
        model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    model = random_clip("quickgelu", seed=1)
    folder = tmp_path_factory.mktemp("hf-quick")
    model.save_pretrained(folder)
    return model, folder


def eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens == EOT_ID).int().argmax(dim=-1)


def test_text_features_match_transformers(checkpoint):
    hf, folder = checkpoint
    bundle = create_model(folder)  # the folder as the model name
    tokens = bundle.tokenizer(CAPTIONS)
    context = hf.config.text_config.max_position_embeddings
    assert tokens.shape == (len(CAPTIONS), context)
    eot = eot_positions(tokens)
    assert len(set(eot.tolist())) == len(CAPTIONS)  # every caption pads differently
    assert (eot == context - 1).any() == (context < 34)  # with 28 positions the longest caption is truncated
    with torch.no_grad():
        ours = bundle.model.encode_text(tokens)
        theirs = hf.get_text_features(input_ids=tokens).pooler_output
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    assert ours.shape == (len(CAPTIONS), hf.config.projection_dim)
    assert bundle.model.logit_scale.item() == hf.logit_scale.item()
    assert bundle.name.startswith("hf-clip-") and "Hugging Face checkpoint" in bundle.label
    assert bundle.info["format"] == "huggingface" and bundle.checkpoint.parent == folder


def test_image_features_match_transformers(checkpoint):
    hf, folder = checkpoint
    bundle = create_model(folder)
    size = hf.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = bundle.model.encode_image(pixels)
        theirs = hf.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


def test_hooked_residual_stream_matches_hidden_states(checkpoint):
    """hook_embed + hook_pos_embed = transformers' hidden_states[0], blocks.l.hook_resid_post =
    hidden_states[l + 1], at every position up to each caption's EOT."""
    hf, folder = checkpoint
    bundle = create_model(folder)
    tokens = bundle.tokenizer(CAPTIONS)
    hooked = HookedCLIPText(bundle.model)
    with torch.no_grad():
        _, cache = hooked.run_with_cache(tokens)
        hidden = hf.text_model(input_ids=tokens, output_hidden_states=True).hidden_states
    assert len(hidden) == hooked.cfg.n_layers + 1 == hf.config.text_config.num_hidden_layers + 1
    ours = [cache["hook_embed"] + cache["hook_pos_embed"]]
    ours += [cache[f"blocks.{layer}.hook_resid_post"] for layer in range(hooked.cfg.n_layers)]
    for layer, (state, reference) in enumerate(zip(ours, hidden)):
        for row, eot in enumerate(eot_positions(tokens).tolist()):
            torch.testing.assert_close(state[row, :eot + 1], reference[row, :eot + 1], **RESIDUAL_TOLERANCE,
                                       msg=lambda m: f"layer {layer}, caption {row}: {m}")


def test_every_way_to_name_the_checkpoint_loads_the_same_model(quick):
    hf, folder = quick
    reference = create_model(folder).model.state_dict()
    weights = folder / "model.safetensors"
    with pytest.warns(UserWarning, match=r"ignoring model ViT-B-32: .* Hugging Face checkpoint.*differs from "
                                         r"ViT-B-32 in embed_dim 512 vs 24"):
        by_folder, _, _ = load_clip("ViT-B-32", pretrained=folder)
    with pytest.warns(UserWarning, match="ignoring model RN50"):
        bundle = create_model("RN50", pretrained=weights)  # a weights file, its config.json beside it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint's own config names its own architecture: no warning
        by_config, _, _ = load_clip(folder / "config.json", pretrained=weights)
        by_registered_name, _, _ = load_clip(bundle.name, pretrained=weights)
    assert "Hugging Face checkpoint" in bundle.label and bundle.checkpoint == weights
    for model in (by_folder, bundle.model, by_config, by_registered_name):
        assert model.state_dict().keys() == reference.keys()
        assert all(torch.equal(model.state_dict()[key], value) for key, value in reference.items())
    random_weights = create_model(folder / "config.json")  # a config alone: the architecture, random weights
    assert random_weights.name == bundle.name and "random weights" in random_weights.label
    assert not torch.equal(random_weights.model.token_embedding.weight, reference["token_embedding.weight"])


def test_weights_file_with_the_config_given_as_the_model(quick, tmp_path):
    hf, folder = quick
    shutil.copy(folder / "model.safetensors", tmp_path / "weights.safetensors")  # no config.json beside it
    model, _, tokenizer = load_clip(folder / "config.json", pretrained=tmp_path / "weights.safetensors")
    tokens = tokenizer(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), hf.get_text_features(input_ids=tokens).pooler_output,
                                   **TOLERANCE)


def test_sharded_checkpoint_loads(tmp_path):
    hf = random_clip("quickgelu", seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    index = tmp_path / "model.safetensors.index.json"
    assert index.is_file() and len(list(tmp_path.glob("model-*.safetensors"))) > 1
    bundle = create_model(tmp_path)
    assert bundle.checkpoint == index
    tokens = bundle.tokenizer(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model.encode_text(tokens),
                                   hf.get_text_features(input_ids=tokens).pooler_output, **TOLERANCE)


def test_model_fine_tuned_from_a_checkpoint_reloads_from_its_delta(quick, tmp_path):
    """What finetune-layers saves for a model loaded from a Hugging Face checkpoint: the trained tensors,
    with the base weights file recorded by path and SHA-256; reloading converts the base again."""
    _, folder = quick
    bundle = create_model(folder)
    base = base_record(bundle.model, bundle.checkpoint)
    trained = "transformer.resblocks.1.mlp.c_fc.weight"
    with torch.no_grad():
        bundle.model.state_dict()[trained].add_(0.25)
    delta = save_clip_checkpoint(bundle.model, tmp_path / "model.safetensors", model_name=bundle.name, base=base,
                                 trained=[trained])
    reloaded, _, _ = load_clip(folder, pretrained=delta)
    assert all(torch.equal(reloaded.state_dict()[key], value) for key, value in bundle.model.state_dict().items())


def test_preprocessing_follows_preprocessor_config(quick, tmp_path):
    _, folder = quick
    copy = tmp_path / "with-preprocessor"
    shutil.copytree(folder, copy)
    (copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                                 "image_std": [0.25, 0.25, 0.25]}))
    normalize = create_model(copy).preprocess.transforms[-1]
    assert list(normalize.mean) == [0.5] * 3 and list(normalize.std) == [0.25] * 3
    default = create_model(folder).preprocess.transforms[-1]  # no preprocessor_config.json: OpenAI's, as both use
    assert list(default.mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])


# --- errors: one line each, naming the file ------------------------------------------------------

def _one_line_error(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(ModelLoadError, match=match) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def _edited_copy(folder, tmp_path, edit) -> object:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_missing_transformers_is_one_clear_line(quick, monkeypatch):
    _, folder = quick
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    message = _one_line_error(r"needs the optional dependency transformers: pip install 'clip-negation-probe\[hf\]'",
                              create_model, folder)
    assert str(folder / "config.json") in message


def test_non_clip_config_is_refused(quick, tmp_path):
    copy = _edited_copy(quick[1], tmp_path, lambda c: c.update(model_type="bert", architectures=["BertModel"]))
    message = _one_line_error(r"model_type 'bert' is not a CLIP model", load_clip, "ViT-B-32", pretrained=copy)
    assert str(copy / "config.json") in message


def test_text_only_checkpoint_is_refused(tmp_path):
    torch.manual_seed(0)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**SIZES["quickgelu"]["text_config"])).save_pretrained(
        tmp_path)
    _one_line_error(r"CLIPTextModel checkpoint \(model_type 'clip_text_model'\) holds only the text tower",
                    create_model, tmp_path)


def test_shape_mismatch_names_tensor_and_file(quick, tmp_path):
    copy = _edited_copy(quick[1], tmp_path, lambda c: c["text_config"].update(intermediate_size=144))
    message = _one_line_error(r"does not fit its config .*: 9 tensors have the wrong shape "
                              r"\(text_model.encoder.layers.0.mlp.fc1.weight: checkpoint \(96, 48\) vs config "
                              r"\(144, 48\)", create_model, copy)
    assert str(copy / "model.safetensors") in message


def test_missing_and_unknown_tensors(quick, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = _edited_copy(quick[1], tmp_path, lambda c: None)
    state = load_file(copy / "model.safetensors")
    del state["vision_model.post_layernorm.bias"]
    state["text_model.encoder.layers.3.mlp.fc1.weight"] = torch.zeros(96, 48)  # a fourth layer the config lacks
    save_file(state, copy / "model.safetensors")
    _one_line_error(r"1 tensors are missing \(vision_model.post_layernorm.bias\); 1 tensors are not part of a "
                    r"CLIPModel \(text_model.encoder.layers.3.mlp.fc1.weight\)", create_model, copy)


def test_folder_without_weights_or_config(quick, tmp_path, monkeypatch):
    (tmp_path / "config-only").mkdir()
    shutil.copy(quick[1] / "config.json", tmp_path / "config-only")
    _one_line_error(r"config-only has config.json but no weights file \(model.safetensors, pytorch_model.bin",
                    create_model, tmp_path / "config-only")
    (tmp_path / "empty").mkdir()
    _one_line_error(r"empty has no config.json, so it is not a Hugging Face checkpoint folder",
                    load_clip, "ViT-B-32", pretrained=tmp_path / "empty")
    monkeypatch.chdir(tmp_path)  # the folder named bare, as a model name: said, not "see open_clip's list"
    _one_line_error(r"unknown model name 'empty'. A folder empty exists here, but it has no config.json",
                    create_model, "empty")
    (tmp_path / "weights-only").mkdir()
    shutil.copy(quick[1] / "model.safetensors", tmp_path / "weights-only")
    _one_line_error(r"weights-only/model.safetensors holds Hugging Face CLIP weights .* but no config.json is "
                    r"beside it", load_clip, "ViT-B-32", pretrained=tmp_path / "weights-only" / "model.safetensors")


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["text_config"].update(vocab_size=1000),
     r"vocab_size 1000 is not CLIP's BPE vocabulary \(49408\): .* another tokenizer"),
    (lambda c: [c[t].update(hidden_act="gelu_new") for t in ("text_config", "vision_config")],
     r"hidden_act 'gelu_new' \(text\) / 'gelu_new' \(vision\): open_clip builds 'quick_gelu' or 'gelu'"),
    (lambda c: c["vision_config"].update(hidden_act="gelu"),
     r"hidden_act 'quick_gelu' \(text\) / 'gelu' \(vision\)"),
], ids=["vocabulary", "activation", "mixed-activations"])
def test_configs_open_clip_cannot_build_exactly_are_refused(quick, tmp_path, edit, match):
    copy = _edited_copy(quick[1], tmp_path, edit)
    _one_line_error(r"config.json: this CLIP config cannot be built exactly by open_clip: " + match,
                    create_model, copy)


def test_damaged_config_json(quick, tmp_path):
    copy = _edited_copy(quick[1], tmp_path, lambda c: None)
    (copy / "config.json").write_text('{"model_type": "clip", ')
    _one_line_error(r"config.json is not valid JSON", create_model, copy)
