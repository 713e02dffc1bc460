"""The `freeatm` console script: a mistake in the command is a message and exit code 2, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def freeatm(*args, **env):
    return subprocess.run([sys.executable, "-m", "freeatm_hf.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_a_mistake_in_the_command_is_named_without_a_traceback(tmp_path):
    res = freeatm("export", str(tmp_path), str(tmp_path / "out"), "--to", "timm")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"freeatm export: error: {tmp_path} is not a checkpoint folder" in res.stderr
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    res = freeatm("eval", "retrieval", "--model", str(tmp_path / "ckpt"), "--dataset", "d", "--finetune_split", "train")
    assert res.returncode == 2 and "freeatm eval retrieval: error: --finetune_split needs --finetune_dir" in res.stderr
    # The traceback on request, for a bug report.
    res = freeatm("export", str(tmp_path), str(tmp_path / "out"), "--to", "timm", FREEATM_TRACEBACK="1")
    assert res.returncode == 1 and "Traceback" in res.stderr and "ValueError" in res.stderr


def test_help_shows_every_options_default_also_without_a_help_text():
    import argparse
    import re

    from freeatm_hf.cli import HelpFormatter

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--split", default="train")
    parser.add_argument("--k", type=int, default=20, help="neighbours")
    parser.add_argument("--revision")  # None: nothing to show
    text = re.sub(r"\s+", " ", parser.format_help())
    assert "--split SPLIT (default: train)" in text and "--k K neighbours (default: 20)" in text
    assert text.endswith("--revision REVISION ")  # no "(default: None)"
    res = freeatm("eval", "knn", "--help")
    assert res.returncode == 0 and "--test_split TEST_SPLIT (default: test)" in re.sub(r"\s+", " ", res.stdout)


def test_under_a_launcher_only_the_main_process_logs_info():
    code = ("import logging; from freeatm_hf.cli import setup_logging; setup_logging(); "
            "log = logging.getLogger('freeatm_hf.x'); log.info('said once'); log.warning('said by all')")
    def stderr(**env):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, **env}).stderr

    main, replica = stderr(RANK="0", WORLD_SIZE="2"), stderr(RANK="1", WORLD_SIZE="2")
    assert "said once" in main and "said by all" in main
    assert "said once" not in replica and "said by all" in replica
    # A RANK without a launcher's WORLD_SIZE (a cluster's node rank), or not a number, is a single process.
    assert "said once" in stderr(RANK="1") and "said once" in stderr(RANK="", WORLD_SIZE="2")


def test_the_module_entry_points_answer_as_the_console_script(tmp_path):
    """`accelerate launch -m freeatm_hf.train|generate` (the README's multi-GPU route) and `python -m freeatm_hf`
    name a mistake as `freeatm` does."""
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True)  # noqa: E731
    res = run("freeatm_hf.train", "simclr", "--dataset", "d", "--output_dir", str(tmp_path / "o"), "--queue_size", "5")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "freeatm train simclr: error: freeatm train simclr would not read --queue_size" in res.stderr
    res = run("freeatm_hf.generate", "--output_dir", str(tmp_path), "--num_images", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "freeatm generate: error:" in res.stderr
    res = run("freeatm_hf", "export", str(tmp_path), str(tmp_path / "out"), "--to", "timm")
    assert res.returncode == 2 and f"freeatm export: error: {tmp_path} is not a checkpoint folder" in res.stderr


def test_the_projects_recipes_are_read_from_any_directory_and_a_missing_one_is_named_with_them(tmp_path,
                                                                                                  monkeypatch):
    import yaml

    from freeatm_hf.generate.cli import read_recipe

    root = Path(__file__).resolve().parents[1]
    own = yaml.safe_load((root / "recipes" / "simclr_atm.yaml").read_text())
    raw_smoke = yaml.safe_load((root / "recipes" / "contrastive_cpu_smoke.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # not the checkout: an installed package carries its recipes
    assert read_recipe("recipes/simclr_atm.yaml") == read_recipe("simclr_atm.yaml") == own
    # Its paths into the project's folders are the shipped ones where the working directory has none; the
    # run's output stays where it runs.
    from freeatm_hf.spaces import space_dir

    smoke = read_recipe("contrastive_cpu_smoke.yaml")
    assert smoke["dataset"] == str(space_dir() / "example_dataset") and smoke["output_dir"] == raw_smoke["output_dir"]
    (tmp_path / "spaces" / "mask_viewer" / "example_dataset").mkdir(parents=True)  # the user's own, here
    assert read_recipe("contrastive_cpu_smoke.yaml")["dataset"] == "spaces/mask_viewer/example_dataset"
    (tmp_path / "simclr_atm.yaml").write_text("dataset: spaces/none\n")  # a file of the user's is theirs, as written
    assert read_recipe("simclr_atm.yaml") == {"dataset": "spaces/none"}
    for missing in ("recipes/simclr_atm.yml", "configs/simclr_atm.yaml"):  # another folder is no recipe of ours
        with pytest.raises(FileNotFoundError, match=rf"recipe {missing} not found \(the project's own: .*mae_atm.yaml"):
            read_recipe(missing)
    for command in (["generate"], ["train", "simclr"]):
        res = subprocess.run([sys.executable, "-m", "freeatm_hf.cli", *command, "recipes/no_such.yaml"],
                             capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "recipe recipes/no_such.yaml not found (the project's own: blip_atm.yaml" in res.stderr


def test_http_requests_are_not_logged_one_line_each_but_their_warnings_are():
    code = ("import logging; from freeatm_hf.cli import setup_logging; setup_logging(); "
            "[logging.getLogger(n).info('GET https://hub/x %s', n) for n in ('httpx', 'httpcore')]; "
            "logging.getLogger('httpx').warning('retrying'); logging.getLogger('freeatm_hf.x').info('said')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert "GET https://hub/x" not in err and "retrying" in err and "said" in err


def test_a_bare_freeatm_lists_the_commands(capsys):
    import pytest

    from freeatm_hf.cli import COMMANDS, main

    with pytest.raises(SystemExit) as e:
        main([])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(name in out for name in COMMANDS)


def test_an_option_whose_unset_value_the_help_explains_shows_no_default_none():
    import re

    from freeatm_hf.generate.cli import make_parser

    text = re.sub(r"\s+", " ", make_parser().format_help())
    assert "(default: None)" not in text
    assert "--revision REVISION Branch, tag or commit of a Hub pipeline (the commit it resolved to goes into the card). --num" in text
    assert "Number of images (rows) to generate. (default: 64)" in text


def test_a_connection_error_other_than_the_hubs_keeps_its_traceback(monkeypatch):
    """Only a push that cannot reach the Hub is the network's one-line failure; another lost connection (a
    dataset server, a rendezvous) is a failure to debug, not a mistake in the command."""
    import pytest

    import freeatm_hf.cli as cli

    def lost(argv):
        raise ConnectionError("the dataset server closed the connection")

    monkeypatch.setattr(cli, "main", lost)
    with pytest.raises(ConnectionError, match="the dataset server closed"):
        cli.run(["eval", "knn"])


@pytest.mark.parametrize("module", ["freeatm_hf.toy.table1", "freeatm_hf.toy.table2", "freeatm_hf.toy.showcase",
                                    "freeatm_hf.toy.train_t2i"])
def test_a_module_entry_points_help_says_its_whole_first_sentence(module):
    """The help's description was the docstring's first line, cut mid-sentence ("... contrastive learning on
    generated"): it is the docstring's first paragraph."""
    import importlib

    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    description = " ".join(res.stdout.split("\n\n")[1].split())
    paragraph = " ".join(importlib.import_module(module).__doc__.split("\n\n")[0].split())
    assert description == paragraph and description.endswith((".", "?", ")"))
