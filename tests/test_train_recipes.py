"""Named recipes (deqloop/train/recipes.py): the demo, the examples and the sweep presets build the
configs they built before the recipes existed (frozen in tests/recipe_configs.json), explicit
settings win, and ``deqloop train --recipe`` goes through the real command-line parser."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import deqloop.train
from deqloop.cli import build_parser, main
from deqloop.demo import demo_config
from deqloop.errors import ConfigError
from deqloop.train.recipes import RECIPES, config_from_flat, get_recipe, nested, recipe, recipe_names, recipe_values
from experiments.presets import PRESETS, RunSpec

HERE = Path(__file__).resolve().parent
FROZEN = json.loads((HERE / "recipe_configs.json").read_text())


def plain(value):
    return json.loads(json.dumps(value))


def same_config(config, frozen: dict) -> None:
    """``config`` is the config ``frozen`` (a to_dict of the code before recipes) describes, field by field."""
    assert plain(config.to_dict()) == plain(config_from_flat(frozen).to_dict())


def test_the_frozen_configs_are_complete_configs():
    """Every field is written out (a default changed later still shows as a difference)."""
    for config in (*FROZEN["demo"].values(), *(e["config"] for e in FROZEN["examples"])):
        flat = plain(config_from_flat(config).to_flat())  # the flat form the frozen configs were stored in
        assert {k: flat[k] for k in config} == config
        assert set(flat) - set(config) == {"rope_base", "attention_backend", "gate_cap", "init_scale", "throw",
                                         "compile_segment"}


@pytest.mark.parametrize("quick", [False, True])
def test_the_demo_builds_its_earlier_config(quick):
    same_config(demo_config(quick=quick), FROZEN["demo"]["quick" if quick else "default"])
    assert demo_config(quick=quick).model.width == 32  # and the values are the README's recipe


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", HERE.parent / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Built(Exception):
    pass


@pytest.mark.parametrize("case", FROZEN["examples"], ids=lambda c: " ".join([c["example"], *c["argv"]]))
def test_each_example_builds_its_earlier_config(case, monkeypatch):
    """Through the example's own entry point and ``deqloop train``'s parser, as ``python examples/X.py``."""
    built = []

    def capture(config):
        built.append(config)
        raise Built

    monkeypatch.setattr(deqloop.train, "train", capture)
    monkeypatch.setenv("DEQLOOP_SHARED", str(HERE / "no-shared-data"))  # the chess example's generated positions
    with pytest.raises(Built):
        load_example(case["example"]).main(case["argv"])
    same_config(built[0], case["config"])


@pytest.mark.parametrize("cell", FROZEN["preset_cells"],
                         ids=lambda c: f"{c['preset']} {RunSpec(**c['spec']).name}")
def test_each_preset_cell_has_its_earlier_fields(cell):
    """What the sweep trains (and compares with a finished run's settings) is unchanged."""
    assert plain(PRESETS[cell["preset"]].train_fields(RunSpec(**cell["spec"]))) == cell["fields"]


PRESET_RECIPES = {(p, t): f"{p}/{t}" for p in ("cpu", "seed-gpu", "seed-cpu", "gpu", "tiny", "paper")
                  for t in PRESETS[p].tasks}
PRESET_RECIPES |= {("recipes", "prefix_sums"): "cpu/prefix_sums", ("chess", "chess"): "chess/chess"}


@pytest.mark.parametrize("preset,task", sorted(PRESET_RECIPES))
def test_a_preset_recipe_is_the_presets_first_cell(preset, task):
    """``--recipe P/T`` trains the preset's cell with its recipe's regime, recall internal and post norm."""
    p, name = PRESETS[preset], PRESET_RECIPES[preset, task]
    regime = next(r for r, fields in p.regime_train.items() if fields == dict(get_recipe(name).regime))
    cell = p.train_fields(RunSpec(task, "internal", "post", regime, 0))
    values = nested(recipe_values(name, recall="internal", norm="post", seed=0))
    assert {"task_options": {}, **values} == {"task": task, **cell}


def test_every_preset_task_has_its_recipe():
    assert {(name, t) for name, p in PRESETS.items() for t in p.tasks} == set(PRESET_RECIPES)


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_builds(name):
    if name == "seed-gpu/sudoku":  # Sudoku-Extreme's files are not bundled
        with pytest.raises(ConfigError, match="data"):
            recipe(name)
        return
    config = recipe(name)
    assert config.task == get_recipe(name).settings["task"]
    assert get_recipe(name).about.strip()


def test_explicit_settings_win_and_the_rest_is_the_recipes():
    base, changed = recipe("demo"), recipe("demo", width=16, length=10, lr=5e-4)
    assert (changed.model.width, changed.task_options["length"], changed.optim.lr) == (16, 10, 5e-4)
    same = {k: v for k, v in base.to_flat().items() if k not in ("width", "lr", "task_options")}
    assert {k: changed.to_flat()[k] for k in same} == same
    assert changed.task_options["min_length"] == 4 and changed.task_options["hard_length"] == 48


def test_a_length_given_drops_the_split_schedule():
    values = recipe_values("examples/prefix_sums", length=12)
    assert values["length"] == 12 and not {"min_length", "start_length", "start_min_length", "ramp_steps"} & set(values)
    assert recipe_values("examples/prefix_sums", min_length=6)["start_length"] == 8  # only --length does
    assert "blanks" not in recipe_values("examples/sudoku", data="x.csv")
    assert recipe_values("examples/sudoku", train_band="easy")["hard_blanks"] == (25, 35)


def test_another_loss_drops_the_progressive_losss_settings():
    progressive = recipe_values("examples/sudoku")
    assert (progressive["alpha"], progressive["detach_z0"]) == (0.5, True)
    equilibrium = recipe_values("examples/sudoku", loss="equilibrium")
    assert "alpha" not in equilibrium and "detach_z0" not in equilibrium and equilibrium["max_iter"] == 16
    assert recipe_values("demo", loss="equilibrium").keys().isdisjoint({"alpha", "depth_offset", "detach_z0"})
    # a warm start trains with the progressive loss first: it keeps them; explicit ones are kept too
    assert recipe_values("demo", loss="equilibrium", pretrain_steps=100)["depth_offset"] == 2
    assert recipe_values("demo", loss="equilibrium", pretrain_steps=0).get("alpha") is None
    assert recipe_values("demo", loss="equilibrium", alpha=0.3)["alpha"] == 0.3
    assert recipe("cpu/prefix_sums", loss="equilibrium", backward="implicit").objective.depth_offset is None


def test_an_unknown_recipe_is_an_error_listing_the_names(capsys):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; known: demo, examples/prefix_sums"):
        recipe("nope")
    assert main(["train", "--recipe", "nope", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'nope'" in err and all(name in err for name in RECIPES)


def test_an_unknown_setting_is_an_error():
    with pytest.raises(ConfigError, match="widht"):
        recipe("demo", widht=3)


def test_list_recipes_names_each_with_what_it_is_for(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--list-recipes"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert lines[0].split(None, 1)[1] == RECIPES["demo"].about


def test_the_help_lists_the_recipes_values(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "examples/sudoku", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--blanks" in out and "recipe examples/sudoku (its values replace the defaults above" in out
    assert "max_iter 16" in out and "blanks (4, 24)" in out


def test_recipe_through_the_command_line(tmp_path):
    """The recipe's task offers its own flags; explicit flags win; the config written is the recipe's."""
    argv = ["train", "--recipe", "examples/sudoku", "--train-band", "easy", "--width", "8"]
    args = build_parser(argv).parse_args(argv)
    assert (args.recipe, args.train_band, args.width) == ("examples/sudoku", "easy", 8)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny/prefix_sums", "--steps", "2", "--hard-length", "10", "--out", str(out),
                 "--eval-size", "0"]) == 0
    config = json.loads((out / "config.json").read_text())
    expected = recipe("tiny/prefix_sums", steps=2, hard_length=10, out=str(out), eval_size=0)
    assert config == plain(expected.to_dict())
    assert (config["model"]["width"], config["optim"]["steps"], config["task_options"]["hard_length"]) == (16, 2, 10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(about=" ", settings={"task": "prefix_sums"}), "what it is for"),
    (dict(about="x", settings={"width": 8}), "name no task"),
    (dict(about="x", settings={"task": "prefix_sums", "loss": "progressive"}, regime={"loss": "progressive"}),
     "both set loss"),
    (dict(about="x", settings={"task": "prefix_sums"}, unless={"length": ("length",)}), "names length"),
])
def test_a_malformed_recipe_is_refused(kwargs, message):
    from deqloop.train.recipes import Recipe

    with pytest.raises(ConfigError, match=message):
        Recipe(**kwargs)
