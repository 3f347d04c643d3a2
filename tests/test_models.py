"""load_clip: names, config files, local checkpoints, the QuickGELU pitfall and clear errors."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from probing.clip.loading import ModelLoadError, load_clip, save_clip_checkpoint, uses_quick_gelu


def test_builtin_name_returns_model_preprocess_tokenizer():
    model, preprocess, tokenizer = load_clip("RN50")  # a real open_clip name, random weights
    tokens = tokenizer(["a photo of a dog"])
    assert tokens.shape == (1, 77)
    assert model.encode_text(tokens).shape == (1, 1024)
    assert not model.training


def test_config_file_builds_custom_architecture(write_config):
    model, _, tokenizer = load_clip(write_config("tiny-width96", text_width=96))
    assert model.token_embedding.embedding_dim == 96
    assert tokenizer(["a dog"]).shape == (1, 32)  # the config's context length


def test_checkpoint_round_trip_gives_identical_features(write_config, tmp_path):
    config = write_config("tiny-rt")
    model, _, tokenizer = load_clip(config)
    path = save_clip_checkpoint(model, tmp_path / "tiny.safetensors", model_name="tiny-rt")
    reloaded, _, _ = load_clip(config, pretrained=path)
    tokens = tokenizer(["a red circle and no blue square"])
    assert torch.equal(model.encode_text(tokens), reloaded.encode_text(tokens))


def test_torch_save_checkpoint_with_ddp_prefix_loads(write_config, tmp_path):
    config = write_config("tiny-pt")
    model, _, tokenizer = load_clip(config)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    reloaded, _, _ = load_clip(config, pretrained=path)
    tokens = tokenizer(["no dog"])
    assert torch.equal(model.encode_text(tokens), reloaded.encode_text(tokens))


def test_openai_style_weights_into_gelu_architecture_are_corrected(write_config, tmp_path):
    """OpenAI checkpoints carry input_resolution/context_length/vocab_size and need QuickGELU."""
    quick = write_config("tiny-quick", quick_gelu=True)
    gelu = write_config("tiny-gelu", quick_gelu=False)
    source, _, tokenizer = load_clip(quick)
    state = dict(source.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(32), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_style.pt"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="QuickGELU"):
        model, _, _ = load_clip(gelu, pretrained=path)
    assert uses_quick_gelu(model)
    tokens = tokenizer(["a dog without a cat", "no cat"])
    assert torch.allclose(model.encode_text(tokens), source.encode_text(tokens), atol=1e-6)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.encode_image(images), source.encode_image(images), atol=1e-6)


class _OpenAIArchive(nn.Module):
    """The layout of OpenAI's released TorchScript archives: CLIP's tensors under open_clip's (= OpenAI's) names,
    plus input_resolution / context_length / vocab_size."""

    def __init__(self, clip: nn.Module, resolution: int, context: int):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, value in dict(input_resolution=resolution, context_length=context, vocab_size=49408).items():
            self.register_buffer(name, torch.tensor(value))

    def forward(self, text: torch.Tensor) -> torch.Tensor:  # tracing needs a forward; the archive keeps every tensor
        return self.token_embedding(text).sum() + self.positional_embedding.sum()


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace:FutureWarning")  # building the archive
def test_openai_torchscript_archive_loads_with_quick_gelu_and_matches(write_config, tmp_path):
    source, _, tokenizer = load_clip(write_config("tiny-ts-quick", quick_gelu=True))
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(_OpenAIArchive(source, 32, 32), (tokenizer(["a dog"]),)).save(str(archive))
    with pytest.warns(UserWarning, match="QuickGELU"):
        model, _, _ = load_clip(write_config("tiny-ts-gelu"), pretrained=archive)
    assert uses_quick_gelu(model)
    tokens = tokenizer(["a dog without a cat", "there is no red square next to the blue circle"])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), source.encode_text(tokens), atol=1e-6)
        assert torch.allclose(model.encode_image(images), source.encode_image(images), atol=1e-6)


def test_own_checkpoint_metadata_keeps_quick_gelu(write_config, tmp_path):
    source, _, _ = load_clip(write_config("tiny-q2", quick_gelu=True))
    path = save_clip_checkpoint(source, tmp_path / "q.safetensors", model_name="tiny-q2")
    with pytest.warns(UserWarning, match="QuickGELU"):
        model, _, _ = load_clip(write_config("tiny-g2"), pretrained=path)
    assert uses_quick_gelu(model)


def test_gelu_weights_into_gelu_architecture_do_not_warn(write_config, tmp_path):
    config = write_config("tiny-g3")
    model, _, _ = load_clip(config)
    path = save_clip_checkpoint(model, tmp_path / "g.safetensors", model_name="tiny-g3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reloaded, _, _ = load_clip(config, pretrained=path)
    assert not uses_quick_gelu(reloaded)


def test_unknown_name_is_one_clear_error():
    with pytest.raises(ModelLoadError, match=r"unknown model name 'ViT-B-33'.*ViT-B-32"):
        load_clip("ViT-B-33")


def test_missing_checkpoint(write_config, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_clip(write_config("tiny-m"), pretrained=tmp_path / "nowhere.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_checkpoint(write_config, tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_clip(write_config("tiny-c"), pretrained=path)


def test_empty_checkpoint(write_config, tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(ModelLoadError, match="empty"):
        load_clip(write_config("tiny-e"), pretrained=path)


def test_shape_mismatch_names_the_tensors(write_config, tmp_path):
    small, _, _ = load_clip(write_config("tiny-w64", text_width=64))
    path = save_clip_checkpoint(small, tmp_path / "w64.safetensors", model_name="tiny-w64")
    with pytest.raises(
        ModelLoadError,
        match=r"does not fit architecture tiny-w96: 53 tensors have the wrong shape "
        r"\(ln_final.bias: checkpoint \(64,\) vs model \(96,\)",
    ):
        load_clip(write_config("tiny-w96", text_width=96), pretrained=path)


def test_unknown_pretrained_tag(write_config):
    with pytest.raises(ModelLoadError, match="neither a pretrained tag"):
        load_clip("RN50", pretrained="no-such-tag")


def test_bad_config_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_clip(path)


def test_every_open_clip_config_passes_the_config_check():
    """The check refuses only what open_clip cannot build as written: every config open_clip ships and this
    package's own pass it (tests/test_malformed_inputs.py holds the configs it refuses)."""
    import json

    import open_clip

    from probing.clip import CONFIGS
    from probing.clip.model_config import check_model_config

    configs = {name: open_clip.get_model_config(name) for name in open_clip.list_models()}
    configs.update({path.name: json.loads(path.read_text()) for path in CONFIGS.glob("*.json")})
    assert len(configs) > 100
    for name, config in configs.items():
        check_model_config(config, name)


@pytest.mark.parametrize("name", ["negclip-tiny", "negclip-micro"])
def test_parameter_estimate_is_close_to_the_built_model(name):
    """estimated_parameters (which refuses configs past MAX_PARAMETERS) counted a second way: the built model."""
    import json

    from probing.clip import CONFIGS
    from probing.clip.model_config import estimated_parameters

    model, _, _ = load_clip(name)
    built = sum(p.numel() for p in model.parameters())
    estimate = estimated_parameters(json.loads((CONFIGS / f"{name}.json").read_text()))
    assert abs(estimate - built) / built < 0.1, (estimate, built)


def test_checkpoint_with_non_finite_weights_is_refused(write_config, tmp_path):
    config = write_config("tiny")
    model, _, _ = load_clip(config)
    with torch.no_grad():
        model.text_projection[0, 0] = float("inf")
    path = save_clip_checkpoint(model, tmp_path / "inf.safetensors", model_name="tiny")
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata={"open_clip_model": "tiny"})  # no digest to trip over first
    with pytest.raises(ModelLoadError, match=r"inf.safetensors is damaged: 1 tensor\(s\) hold NaN or infinite values "
                                             r"\(text_projection\)"):
        load_clip(config, pretrained=path)
