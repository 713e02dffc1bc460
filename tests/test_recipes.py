from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("generate_*.yaml")), ids=lambda p: p.name)
def test_generate_recipes_parse_into_the_cli_config(path):
    from freeatm_hf.generate.cli import parse

    cfg = parse([str(path)])
    assert cfg.output_dir and cfg.num_images > 0


@pytest.mark.parametrize("path", sorted((RECIPES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1


@pytest.mark.parametrize("path", [RECIPES / n for n in ("simclr_atm.yaml", "moco_atm.yaml", "contrastive_cpu_smoke.yaml",
                                                         "mae_atm.yaml", "mae_cpu_smoke.yaml", "blip_atm.yaml",
                                                         "blip_cpu_smoke.yaml")], ids=lambda p: p.name)
def test_training_recipes_parse(path):
    from freeatm_hf.train.cli import parse, resolve_method

    method = next((m for m in ("moco", "mae", "blip", "simclr") if m in path.name), "simclr")
    # A method's own recipe names it (`accelerate launch -m freeatm_hf.train recipe.yaml`); the contrastive
    # smoke recipe serves SimCLR and MoCo, so the method is named before it.
    argv = [str(path)] if "contrastive" not in path.name else [method, str(path)]
    named, flags = resolve_method(argv + ["--bf16", "false"])
    assert named == method and flags[-2:] == ["--bf16", "false"]
    # bf16 is refused without a GPU, so the check overrides it (overrides after a recipe are the CLI contract).
    args, targs = parse(method, flags)
    recipe = yaml.safe_load(path.read_text())
    assert args.dataset == recipe["dataset"] and targs.output_dir == recipe["output_dir"] and not targs.bf16


def test_a_recipe_that_names_another_method_or_none_is_refused():
    from freeatm_hf.train.cli import resolve_method

    with pytest.raises(ValueError, match="is a 'mae' recipe, but 'simclr' was asked for"):
        resolve_method(["simclr", str(RECIPES / "mae_atm.yaml")])
    with pytest.raises(ValueError, match="has no `method:` key"):
        resolve_method([str(RECIPES / "contrastive_cpu_smoke.yaml")])


def test_cpu_smoke_recipe_runs(tmp_path):
    from freeatm_hf.train.cli import main

    trainer = main(["simclr", str(RECIPES / "contrastive_cpu_smoke.yaml"), "--output_dir", str(tmp_path), "--max_steps", "2",
                    "--dataset", str(RECIPES.parent / "spaces" / "mask_viewer" / "example_dataset")])
    assert trainer.state.global_step == 2 and (tmp_path / "model.safetensors").is_file()


def test_mae_cpu_smoke_recipe_runs(tmp_path):
    from freeatm_hf.train.cli import main

    trainer = main([str(RECIPES / "mae_cpu_smoke.yaml"), "--output_dir", str(tmp_path), "--num_train_epochs", "1",
                    "--dataset", str(RECIPES.parent / "spaces" / "mask_viewer" / "example_dataset")])
    assert trainer.state.global_step == 1 and (tmp_path / "model.safetensors").is_file()


def test_blip_cpu_smoke_recipe_runs_with_position_prompts(tmp_path):
    from freeatm_hf.train.cli import main

    trainer = main(["blip", str(RECIPES / "blip_cpu_smoke.yaml"), "--output_dir", str(tmp_path),
                    "--dataset", str(RECIPES.parent / "spaces" / "mask_viewer" / "example_dataset")])
    logs = [h for h in trainer.state.log_history if "loss_itm" in h]
    assert trainer.state.global_step == 4 and len(logs) == 4
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    card = (tmp_path / "README.md").read_text()
    assert "- blip" in card and "- attention-masks" in card and "block [P]" in card


def test_shapes_recipe_flags_are_the_trainers():
    """Every `--flag` the shapes recipe passes to the trainer exists (a renamed flag fails here, not after a
    GPU has been booked), and the script is valid bash."""
    import re
    import subprocess

    from freeatm_hf.toy.train_t2i import make_parser

    script = (RECIPES / "shapes_t2i.sh").read_text()
    subprocess.run(["bash", "-n", str(RECIPES / "shapes_t2i.sh")], check=True)
    known = {o for a in make_parser()._actions for o in a.option_strings}
    calls = re.findall(r"-m freeatm_hf\.toy\.train_t2i((?:[^\n]|\\\n)*)", script)
    assert len(calls) == 3
    used = {f for c in calls for f in re.findall(r"(--[a-z_]+)", c)}
    assert used and used <= known, used - known


def test_recipe_mappings_reach_dict_arguments_and_an_empty_list_is_named(tmp_path):
    """YAML writes a dict-valued argument as a mapping: it must arrive as the mapping, not as Python's repr."""
    from freeatm_hf.generate.cli import parse as parse_generate
    from freeatm_hf.train.cli import parse, resolve_method

    recipe = tmp_path / "moco.yaml"
    recipe.write_text("method: moco\ndataset: d\noutput_dir: o\nlr_scheduler_type: cosine_with_min_lr\n"
                      "lr_scheduler_kwargs: {min_lr: 1.0e-6}\n")
    _, targs = parse(*resolve_method([str(recipe)]))
    assert targs.lr_scheduler_kwargs == {"min_lr": 1e-6}
    gen = tmp_path / "gen.yaml"
    gen.write_text("output_dir: out\nlayer_weights: {down_blocks: 0.5, up_blocks.1: 2}\n")
    assert parse_generate([str(gen)]).layer_weight_map() == {"down_blocks": 0.5, "up_blocks.1": 2}
    recipe.write_text("method: moco\ndataset: d\noutput_dir: o\nlr_milestones: []\n")
    with pytest.raises(ValueError, match="recipe key 'lr_milestones' is an empty list"):
        resolve_method([str(recipe)])
