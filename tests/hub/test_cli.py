"""`freeatm push` / `push-model`: every flag reaches the Hub (the in-process loopback Hub)."""

import pytest

from freeatm_hf.hub.cli import main, push_model_main


def test_push_sends_the_folder_to_a_dataset_repo_with_the_flags_given(tmp_path, in_process_hub):
    from datasets import Dataset

    folder = tmp_path / "scenes"
    (folder / "data").mkdir(parents=True)
    Dataset.from_dict({"x": [1, 2]}).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# scenes\n")
    main([str(folder), "scenes", "--private", "--revision", "v2", "--commit_message", "my scenes"])
    repo = in_process_hub.repos[("dataset", "me/scenes")]  # a dataset repo by default, under the token's user
    assert repo["private"] is True and repo["branches"] == {"main", "v2"}
    assert repo["files"]["data/train-00000-of-00001.parquet"] == (
        folder / "data" / "train-00000-of-00001.parquet").read_bytes()
    assert in_process_hub.commits[0]["message"] == "my scenes"
    # Without --private the repo takes the namespace's default: the request does not ask for public.
    main([str(folder), "me/open"])
    assert "visibility" not in in_process_hub.repos[("dataset", "me/open")]["request"]


def test_push_model_refuses_another_repo_type_and_pushes_both_repos_with_the_flags_given(tmp_path, in_process_hub,
                                                                                       capsys):
    from freeatm_hf.hub.model_card import write_model_card

    from .test_stock_exports import checkpoint

    # As argparse refuses a wrong argument: exit 2, the command named; `--repo_type=dataset` went past the check.
    for flag in (["--repo_type", "dataset"], ["--repo_type=dataset"]):
        with pytest.raises(SystemExit) as e:
            push_model_main(["folder", "me/x", *flag])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "freeatm push-model: error: --repo_type: push-model always pushes a model repo" in err
    folder = tmp_path / "ckpt"
    model = checkpoint("mae", folder)  # a tiny ViT: small uploads
    write_model_card(folder, model.config, data={"dataset": "me/scenes"}, training={})
    pushed = push_model_main([str(folder), "enc", "--timm", "--private", "--revision", "v2",
                              "--commit_message", "my model"])
    assert pushed.repo_id == "me/enc"
    repos = in_process_hub.repos
    assert set(repos) == {("model", "me/enc"), ("model", "me/enc-timm")}  # named with the namespace the Hub gave
    assert all(r["private"] is True and r["branches"] == {"main", "v2"} for r in repos.values())
    assert {"model.safetensors", "README.md"} <= set(repos[("model", "me/enc")]["files"])
    assert in_process_hub.commits[0] == {**in_process_hub.commits[0], "repo": ("model", "me/enc"),
                                         "message": "my model"}
    timm_card = repos[("model", "me/enc-timm")]["files"]["README.md"].decode()
    assert "[me/enc (branch `v2`)](https://huggingface.co/me/enc/tree/v2)" in timm_card
    assert "hf-hub:me/enc-timm@v2" in timm_card


def test_an_export_to_an_empty_path_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    """`freeatm export CKPT ""` wrote the export's files into the working directory."""
    from freeatm_hf.hub.cli import export_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / "ckpt"), " ", "--to", "timm"])
    assert e.value.code == 2 and "out: give the export's folder or file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_timm_export_of_a_private_checkpoint_is_not_pushed_to_a_public_repo(tmp_path, in_process_hub):
    """`push-model DIR REPO --timm` without --private, to a repo made private earlier, created REPO-timm with the
    namespace's default (public): the private checkpoint's weights, published."""
    from freeatm_hf.hub.model_card import write_model_card

    from .test_stock_exports import checkpoint

    folder = tmp_path / "ckpt"
    model = checkpoint("mae", folder)
    write_model_card(folder, model.config, data={"dataset": "me/scenes"}, training={})
    push_model_main([str(folder), "me/enc", "--private"])
    push_model_main([str(folder), "me/enc", "--timm"])
    assert in_process_hub.repos[("model", "me/enc-timm")]["private"] is True
    # An export repo that exists and is public is refused, as --private refuses it.
    push_model_main([str(folder), "me/enc2", "--private"])
    in_process_hub._create({"type": "model", "organization": "me", "name": "enc2-timm"})
    with pytest.raises(ValueError, match="me/enc2-timm exists and is public.*without --timm \\(me/enc2 is private"):
        push_model_main([str(folder), "me/enc2", "--timm"])
    assert not in_process_hub.repos[("model", "me/enc2-timm")]["files"]
    # A public checkpoint's export takes the namespace's default, as the checkpoint's own repo did.
    push_model_main([str(folder), "me/open", "--timm"])
    assert "visibility" not in in_process_hub.repos[("model", "me/open-timm")]["request"]
