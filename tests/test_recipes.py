from pathlib import Path

import pytest

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
