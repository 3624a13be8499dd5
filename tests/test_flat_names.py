"""The settings tree: flat names of nested dataclasses, the flags made from them, the stored forms."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from deqloop.cli.flags import add_dataclass_flags
from deqloop.errors import ConfigError, ConfigKeyError
from deqloop.flat_names import leaves, nest
from deqloop.model import Architecture, LoopedDEQ, ModelSettings, SolveSettings
from deqloop.train.config import DEFAULT_RECIPE, TrainConfig, stored_flat, upgrade_stored


@dataclass
class Inner:
    rate: float = 0.5
    depth: int = 3


@dataclass
class Other:
    depth: int = 7  # the same flat name as Inner.depth


@dataclass
class Tree:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    other: Other | None = field(default=None, metadata={"flat_names": {}})


@dataclass
class Renamed:
    inner: Inner = field(default_factory=Inner)
    other: Other | None = field(default=None, metadata={"flat_names": {"depth": "other_depth"}})


def test_two_nested_settings_with_one_flat_name_fail_when_the_parser_is_built():
    parser = argparse.ArgumentParser()
    with pytest.raises(ConfigError, match=r"settings inner\.depth and other\.depth of Tree would both be named "
                                          r"'depth' \(flag --depth\)"):
        add_dataclass_flags(parser, Tree)
    assert not any("--depth" in a.option_strings for a in parser._actions)  # checked before any flag is added


def test_a_group_renames_its_settings_and_the_flags_follow():
    tree = leaves(Renamed)
    assert {n: leaf.path for n, leaf in tree.items()} == {"rate": ("inner", "rate"), "depth": ("inner", "depth"),
                                                          "other_depth": ("other", "depth")}
    parser = argparse.ArgumentParser()
    assert add_dataclass_flags(parser, Renamed) == ["rate", "depth", "other_depth"]
    args = parser.parse_args(["--other-depth", "9", "--rate", "0.25"])
    assert vars(args) == {"other_depth": 9, "rate": 0.25}  # absent flags stay absent
    assert nest(Renamed, vars(args)) == {"other": {"depth": 9}, "inner": {"rate": 0.25}}
    with pytest.raises(ConfigKeyError, match=r"Renamed got unknown key\(s\) \['width'\]; allowed: rate, depth, "
                                             r"other_depth"):
        nest(Renamed, {"width": 3})


def test_the_training_tree_nests_the_models_own_settings_with_one_default_each():
    tree = leaves(TrainConfig)
    assert tree["width"].path == ("model", "width") and tree["max_iter"].path == ("solve", "max_iter")
    assert tree["solve_precision"].path == ("solve", "precision") and "precision" not in tree
    for name in ("gate_cap", "rope_base", "attention_backend", "init_scale"):  # settable from training
        assert name in tree
    c = TrainConfig.from_flat(gate=0.5, gate_cap=0.6, rope_base=500.0, attention_backend="math", init_scale=0.3)
    arch, solve = c.model_config().arch, c.model_config().solve
    assert (arch.gate_cap, arch.rope_base, arch.attention_backend, solve.init_scale) == (0.6, 500.0, "math", 0.3)
    # the model's defaults are the training's: a model built alone has the same block and solve settings
    model = LoopedDEQ(vocab_size=3, num_classes=2, grid=(32,))
    block = {f.name: getattr(model.config.arch, f.name) for f in dataclasses.fields(ModelSettings)}
    assert ModelSettings(**block) == TrainConfig().model == ModelSettings()
    progressive = TrainConfig.from_flat(loss="progressive")
    assert progressive.solve == SolveSettings() and progressive.model_config().solve == SolveSettings()
    # the equilibrium loss's one named default recipe, over the model's own default solve
    assert dataclasses.replace(TrainConfig().solve, backward="implicit", backward_options={}) == SolveSettings()
    assert (TrainConfig().solve.backward, TrainConfig().solve.backward_options) == (
        DEFAULT_RECIPE["backward"], DEFAULT_RECIPE["backward_options"])
    assert not set(f.name for f in dataclasses.fields(ModelSettings)) & {"vocab_size", "num_classes", "grid", "compile"}
    assert issubclass(Architecture, ModelSettings)


def test_a_flat_stored_config_upgrades_to_the_nested_form_and_builds_the_same_config():
    c = TrainConfig.from_flat(width=16, heads=2, loss="progressive", alpha=0.5, depth_offset=1, lr=3e-3, steps=20,
                              solve_precision="autocast", seed=4)
    flat = c.to_flat()  # the form checkpoints and config.json held before the settings were nested
    flat["backward"] = None  # as that form stored an unset backward
    nested = upgrade_stored(flat)
    solve = ("init", "init_scale", "solver", "max_iter", "rtol", "atol", "solver_options", "backward_options", "throw")
    assert nested["model"]["width"] == 16 and nested["objective"]["depth_offset"] == 1 and nested["run"]["seed"] == 4
    assert nested["solve"] == {**{k: flat[k] for k in solve}, "precision": "autocast"}  # an unset backward: unset
    assert TrainConfig.from_dict(nested) == c == TrainConfig.from_dict(c.to_dict()) == TrainConfig.from_dict(flat)
    assert stored_flat(c.to_dict()) == {k: v for k, v in c.to_flat().items() if k not in ("backward", "backward_options")} | {
        "backward": "implicit", "backward_options": {}}
    assert upgrade_stored(c.to_dict()) == c.to_dict()  # the nested form is today's: nothing to upgrade


def test_a_nested_group_of_the_wrong_kind_or_with_unknown_keys_is_named():
    with pytest.raises(ConfigError, match="model must be a ModelSettings, got dict"):
        TrainConfig(model={"width": 32})
    with pytest.raises(ConfigKeyError, match=r"TrainConfig\.optim got unknown key\(s\) \['width'\]; allowed: "
                                             r"train_size, steps"):
        TrainConfig.from_dict({"optim": {"width": 32}})
    with pytest.raises(ConfigKeyError, match=r"TrainConfig got unknown key\(s\) \['widht'\]"):
        TrainConfig.from_dict({"model": {}, "widht": 3})
