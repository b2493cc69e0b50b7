"""Every bad input fails early, names the culprit and the fix, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import with_non_finite

from methods import METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.merge import run_merge
from optimizer.errors import ConfigError, MergeoptError, ModelError, OutputError


def cfg_for(zoo, method="ties", params=None, models=None, base=True, **extra):
    cfg = {
        "merge_method": method,
        "models": models
        if models is not None
        else [{"model": str(zoo["math"])}, {"model": str(zoo["code"])}],
        **extra,
    }
    if base:
        cfg["base_model"] = str(zoo["base"])
    if params is not None:
        cfg["parameters"] = params
    return cfg


def fails(tmp_path: Path, cfg: dict, error: type, *needles: str) -> str:
    out = tmp_path / "out"
    with pytest.raises(error) as exc:
        run_merge(MergeConfig.from_dict(cfg), out)
    text = str(exc.value)
    for needle in needles:
        assert needle in text, text
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*")), "a partial output folder was left behind"
    return text


def test_missing_model_folder(tiny_zoo, tmp_path):
    cfg = cfg_for(tiny_zoo, models=[{"model": str(tmp_path / "nope")}])
    fails(tmp_path, cfg, ModelError, "model folder not found", "nope")


def test_folder_without_weights(tiny_zoo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_zoo["base"] / "config.json", empty / "config.json")
    fails(
        tmp_path,
        cfg_for(tiny_zoo, models=[{"model": str(empty)}]),
        ModelError,
        "no weights",
        "model.safetensors",
    )


def test_corrupt_and_truncated_safetensors(tiny_zoo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_zoo["math"], bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    fails(
        tmp_path,
        cfg_for(tiny_zoo, models=[{"model": str(bad)}]),
        ModelError,
        "corrupt safetensors",
        "bad",
    )
    shutil.rmtree(bad)
    shutil.copytree(tiny_zoo["math"], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) - 1000])
    fails(
        tmp_path,
        cfg_for(tiny_zoo, models=[{"model": str(bad)}]),
        ModelError,
        "truncated",
        "Re-download",
    )


def test_architecture_and_shape_mismatch(tiny_zoo, tmp_path):
    from tiny_models import build_tokenizer, save_model, tiny_llama

    tok = build_tokenizer("a b".split())
    other = save_model(tiny_llama(len(tok), hidden=16), tok, tmp_path / "other")
    text = fails(
        tmp_path,
        cfg_for(tiny_zoo, models=[{"model": str(other)}]),
        ModelError,
        "shape",
        "model.embed_tokens.weight",
    )
    assert "lm_head.weight" in text  # every mismatch is reported, not just the first
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (other / "config.json").write_text(json.dumps(cfg))
    fails(
        tmp_path,
        cfg_for(tiny_zoo, models=[{"model": str(other)}]),
        ModelError,
        "architecture mistral",
    )


def test_unknown_method_suggests(tiny_zoo, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'ties'"):
        MergeConfig.from_dict(cfg_for(tiny_zoo, method="tie"))
    with pytest.raises(ConfigError, match="Did you mean 'breadcrumbs'"):
        MergeConfig.from_dict(cfg_for(tiny_zoo, method="breadcrumb"))


def test_unknown_keys_suggest(tiny_zoo):
    with pytest.raises(ConfigError, match="Did you mean 'density'"):
        MergeConfig.from_dict(cfg_for(tiny_zoo, params={"densty": 0.5}))
    with pytest.raises(ConfigError, match="Did you mean 'base_model'"):
        MergeConfig.from_dict({**cfg_for(tiny_zoo), "base_modle": "x"})
    with pytest.raises(ConfigError, match="top-level 'parameters'"):
        MergeConfig.from_dict(
            cfg_for(
                tiny_zoo, models=[{"model": str(tiny_zoo["math"]), "parameters": {"lambda": 1}}]
            )
        )


@pytest.mark.parametrize(
    "method,params,needle",
    [
        ("ties", {"density": 1.5}, "outside the valid range (0, 1]"),
        ("ties", {"density": [0.5, 1.5]}, "layer-gradient value 1"),
        ("dare_ties", {"density": 0.0}, "outside the valid range"),
        ("breadcrumbs", {"gamma": -0.1}, "outside the valid range"),
        ("slerp", {"t": 2}, "outside the valid range"),
        ("ties", {"normalize": "yes"}, "true or false"),
    ],
)
def test_out_of_range_values(tiny_zoo, method, params, needle):
    with pytest.raises(ConfigError) as exc:
        cfg = cfg_for(tiny_zoo, method=method, params=params)
        if method == "slerp":
            cfg["models"] = cfg["models"][:1]
        MergeConfig.from_dict(cfg)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    "method,params,needle",
    [
        ("della", {"density": 0.3, "epsilon": 0.5}, "epsilon must be below 0.3"),
        ("della_linear", {"density": 0.9, "epsilon": 0.2}, "epsilon must be below 0.1"),
        ("breadcrumbs", {"beta": 0.6, "gamma": 0.4}, "beta + gamma must be below 1"),
        ("breadcrumbs_ties", {"density": 0.9, "gamma": 0.2}, "density + gamma must be at most 1"),
    ],
)
def test_cross_parameter_checks_before_tensor_work(tiny_zoo, tmp_path, method, params, needle):
    fails(tmp_path, cfg_for(tiny_zoo, method=method, params=params), ConfigError, needle)


def test_both_beta_and_density(tiny_zoo):
    with pytest.raises(ConfigError, match="not both"):
        MergeConfig.from_dict(
            cfg_for(
                tiny_zoo,
                method="breadcrumbs",
                params={"beta": 0.1},
                models=[{"model": str(tiny_zoo["math"]), "parameters": {"density": 0.8}}],
            )
        )


def test_model_stock_needs_two_experts_and_slerp_two_models(tiny_zoo):
    with pytest.raises(ConfigError, match="at least 2 expert"):
        MergeConfig.from_dict(
            cfg_for(tiny_zoo, method="model_stock", models=[{"model": str(tiny_zoo["math"])}])
        )
    with pytest.raises(ConfigError, match="exactly two models.*got 3"):
        MergeConfig.from_dict(cfg_for(tiny_zoo, method="slerp"))
    with pytest.raises(ConfigError, match="needs base_model"):
        MergeConfig.from_dict(cfg_for(tiny_zoo, method="ties", base=False))


def test_existing_output_needs_force(tiny_zoo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--force"):
        run_merge(MergeConfig.from_dict(cfg_for(tiny_zoo)), out)
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_mid_merge_leaves_nothing(tiny_zoo, tmp_path):
    # weights summing to zero are only found per tensor, after writing began
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(tiny_zoo["math"]), "parameters": {"weight": 1.0}},
            {
                "model": str(tiny_zoo["code"]),
                "parameters": {"weight": [{"filter": "norm", "value": -1.0}, {"value": 1.0}]},
            },
        ],
    }
    with pytest.raises(MergeoptError, match="sum to zero"):
        run_merge(MergeConfig.from_dict(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def _methods_inputs(method: str, bad: Path, zoo) -> list[dict]:
    """The experts for ``method``: the bad model first (slerp takes one besides the base)."""
    if method == "slerp":
        return [{"model": str(bad)}]
    return [{"model": str(bad)}, {"model": str(zoo["code"])}]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_non_finite_expert_is_refused_by_every_method(tiny_zoo, tmp_path, method, value):
    bad, tensor = with_non_finite(tiny_zoo["math"], tmp_path / "bad", value, count=3)
    cfg = cfg_for(tiny_zoo, method=method, models=_methods_inputs(method, bad, tiny_zoo))
    # no method may trim the NaN away (TIES did) or blame the parameters (task arithmetic did)
    fails(tmp_path, cfg, ModelError, str(bad), tensor, "3 non-finite value(s)")


def test_a_non_finite_base_is_refused(tiny_zoo, tmp_path):
    bad, tensor = with_non_finite(tiny_zoo["code"], tmp_path / "badbase", float("-inf"))
    cfg = cfg_for(tiny_zoo, base=False, base_model=str(bad))
    fails(tmp_path, cfg, ModelError, str(bad), tensor, "1 non-finite value(s)")


def test_the_same_model_twice_merges_with_a_warning_naming_both(tiny_zoo, tmp_path, capsys):
    import yaml

    from optimizer.cli import main

    math_ = str(tiny_zoo["math"])
    copy = tmp_path / "math-copy"
    shutil.copytree(tiny_zoo["math"], copy)
    base_copy = tmp_path / "base-copy"
    shutil.copytree(tiny_zoo["base"], base_copy)
    cases = [
        ([math_, math_], f"model {math_} and model {math_} are the same folder: it counts twice"),
        ([math_, str(copy)], f"model {math_} and model {copy} hold byte-identical weights"),
        (
            [str(base_copy), math_],
            f"the base {tiny_zoo['base']} and model {base_copy} hold byte-identical "
            "weights: its task vector is zero",
        ),
    ]
    for i, (models, needle) in enumerate(cases):
        path = tmp_path / f"m{i}.yaml"
        path.write_text(yaml.safe_dump(cfg_for(tiny_zoo, models=[{"model": m} for m in models])))
        assert main(["merge", str(path), "--out", str(tmp_path / f"out{i}")]) == 0
        err = capsys.readouterr().err
        assert f"mergeopt: warning: {needle}" in err, err
        assert (tmp_path / f"out{i}" / "model.safetensors").is_file()  # merged as given
    path = tmp_path / "distinct.yaml"
    path.write_text(yaml.safe_dump(cfg_for(tiny_zoo)))
    assert main(["merge", str(path), "--out", str(tmp_path / "fine")]) == 0
    assert "warning" not in capsys.readouterr().err  # distinct experts: not a word
