"""Model loading: three tiny architectures, the real default model, and clear failures."""

from __future__ import annotations

import pytest
import torch

from excise.model import ModelLoadError, load_model
from excise.scoring import top_predictions


def test_tiny_models_load_and_run(tiny):
    tokens = tiny.to_tokens("The capital of France is")
    logits = tiny(tokens)
    assert logits.shape == (1, tokens.shape[1], tiny.cfg.d_vocab)
    assert torch.isfinite(logits).all()
    assert tiny.excise_source.endswith(tiny.cfg.model_name.split("/")[-1]) or tiny.excise_source


def test_tiny_model_hooks_match_the_transformerlens_vocabulary(tiny):
    _, cache = tiny.run_with_cache(tiny.to_tokens("Paris"))
    assert cache["blocks.0.hook_resid_pre"].shape[-1] == tiny.cfg.d_model
    assert cache["blocks.0.mlp.hook_post"].shape[-1] == tiny.cfg.d_mlp
    assert cache["blocks.0.attn.hook_z"].shape[-2:] == (tiny.cfg.n_heads, tiny.cfg.d_head)


@pytest.mark.real
def test_default_model_knows_the_capital_of_france(real_model):
    top = top_predictions(real_model, "The capital of France is", k=3)
    assert top[0][0] == " Paris"
    assert real_model.to_tokens("x")[0, 0].item() == real_model.tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_missing_folder_fails_with_a_clear_message(tmp_path):
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_model(str(tmp_path / "nope" / "model"))


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_id_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_model("excise-nobody/not-a-model")
