"""Real checkpoints in and out: sharded round trips, reload and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimizer.cli import main
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.merge import run_merge


def state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def merge(tmp_path: Path, cfg: dict, out_name="out", **kw) -> Path:
    out = tmp_path / out_name
    run_merge(MergeConfig.from_dict(cfg), out, **kw)
    return out


def test_sharded_round_trip_linear(tiny_zoo, tmp_path):
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(tiny_zoo["math"]), "parameters": {"weight": 1.0}},
            {"model": str(tiny_zoo["code"]), "parameters": {"weight": 3.0}},
        ],
    }
    assert len(list(tiny_zoo["base"].glob("*.safetensors"))) > 1  # sharded input
    out = merge(tmp_path, cfg, max_shard_bytes=30_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    got = state(out)
    a, b = state(tiny_zoo["math"]), state(tiny_zoo["code"])
    assert set(got) == set(a)
    for name in a:
        torch.testing.assert_close(got[name], (a[name] + 3 * b[name]) / 4, rtol=1e-6, atol=1e-7)
    assert not list(tmp_path.glob(".out.partial-*"))


def test_ties_merge_reloads_and_generates(tiny_zoo, tmp_path):
    cfg = {
        "merge_method": "ties",
        "base_model": str(tiny_zoo["base"]),
        "models": [{"model": str(tiny_zoo["math"])}, {"model": str(tiny_zoo["code"])}],
        "parameters": {"density": 0.5, "lambda": 1.0},
        "out_dtype": "bfloat16",
    }
    out = merge(tmp_path, cfg)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ids = tok("the cat sat", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 4
    card = (out / "README.md").read_text()
    assert "ties" in card and "density" in card
    again = yaml.safe_load((out / "mergeopt_config.yaml").read_text())
    assert again["merge_method"] == "ties"
    assert (out / "generation_config.json").is_file()
    assert (out / "tokenizer.json").is_file()


def test_same_seed_same_bytes_other_seed_other_masks(tiny_zoo, tmp_path):
    cfg = {
        "merge_method": "dare_ties",
        "base_model": str(tiny_zoo["base"]),
        "models": [{"model": str(tiny_zoo["math"])}, {"model": str(tiny_zoo["code"])}],
        "parameters": {"density": 0.5},
        "seed": 11,
    }
    a = merge(tmp_path, cfg, "a")
    b = merge(tmp_path, cfg, "b")
    c = merge(tmp_path, {**cfg, "seed": 12}, "c")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_layer_gradient_and_filter_forms(tiny_zoo, tmp_path):
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(tiny_zoo["base"]),
        "models": [
            {
                "model": str(tiny_zoo["math"]),
                "parameters": {"weight": [{"filter": "mlp", "value": 0.0}, {"value": [0.0, 1.0]}]},
            }
        ],
    }
    out = state(merge(tmp_path, cfg))
    base, math_ = state(tiny_zoo["base"]), state(tiny_zoo["math"])
    for name, t in out.items():
        if "mlp" in name:
            expected = base[name]  # the filter wins: weight 0
        elif ".layers.0." in name or "embed" in name:
            expected = base[name]  # first value of the gradient
        else:  # layer 1 (the last) and final norm / lm_head: last value
            expected = math_[name]
        torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-7, msg=name)


def test_force_replaces_and_cli_reports(tiny_zoo, tmp_path, capsys):
    cfg_path = tmp_path / "m.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "model_stock",
                "base_model": str(tiny_zoo["base"]),
                "models": [{"model": str(tiny_zoo["math"])}, {"model": str(tiny_zoo["code"])}],
            }
        )
    )
    out = tmp_path / "ms"
    assert main(["merge", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    assert "merged" in capsys.readouterr().out
    first = (out / "model.safetensors").read_bytes()
    assert main(["merge", str(cfg_path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == first
    assert main(["merge", str(cfg_path), "--out", str(out), "--force", "--quiet"]) == 0


def test_pickle_checkpoint_refused_unless_allowed(tiny_zoo, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_zoo["math"] / "config.json").read_text())
    torch.save(state(tiny_zoo["math"]), folder / "pytorch_model.bin")
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(tiny_zoo["base"]),
        "models": [{"model": str(folder)}],
    }
    from optimizer.errors import ModelError

    with pytest.raises(ModelError, match="--allow-pickle"):
        merge(tmp_path, cfg, "x")
    assert not (tmp_path / "x").exists()
    out = state(merge(tmp_path, cfg, "y", allow_pickle=True))
    torch.testing.assert_close(out["lm_head.weight"], state(tiny_zoo["math"])["lm_head.weight"])


def test_tied_embeddings_model(tmp_path):
    from tiny_models import build_tokenizer, perturbed_copy, save_model, tiny_llama

    tok = build_tokenizer("a b c".split())
    base = tiny_llama(len(tok), tie_word_embeddings=True)
    save_model(base, tok, tmp_path / "b")
    save_model(perturbed_copy(base, 0.01, 1), tok, tmp_path / "e1")
    save_model(perturbed_copy(base, 0.01, 2), tok, tmp_path / "e2")
    cfg = {
        "merge_method": "della",
        "base_model": str(tmp_path / "b"),
        "models": [{"model": str(tmp_path / "e1")}, {"model": str(tmp_path / "e2")}],
    }
    out = merge(tmp_path, cfg)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
