"""Pushing a dataset folder against a loopback Hub (HF_ENDPOINT): the committed files equal the folder."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from freeatm_hf.generate import GenerateConfig
from freeatm_hf.generate.run import generate_dataset

from .fake_hub import FakeHub
from .weights import write_weights

TOKEN = "hf_SECRETtoken1234567890"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "ds"
    generate_dataset(GenerateConfig(output_dir=str(out), num_images=3, batch_size=3, rows_per_shard=2,
                                    num_inference_steps=2, device="cpu"))
    return out


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".freeatm" not in p.parts}


def run_cli(args, endpoint, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf_home")}
    return subprocess.run([sys.executable, "-m", "freeatm_hf.cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT)


def test_freeatm_push_uploads_exactly_the_folder_without_leaking_the_token(dataset_dir, tmp_path):
    with FakeHub() as hub:
        res = run_cli(["push", str(dataset_dir), "me/scenes", "--private"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        repo = hub.repos[("dataset", "me/scenes")]
        assert repo["private"] is True
        local = local_files(dataset_dir)
        assert {k: v for k, v in repo["files"].items() if k != "README.md"} == {k: v for k, v in local.items()
                                                                                  if k != "README.md"}
        assert {"README.md", "examples/example_0.png"} <= set(repo["files"])
        assert not any(p.startswith(".freeatm") for p in repo["files"])
        assert hub.auth_headers and all(h == f"Bearer {TOKEN}" for h in hub.auth_headers)
        assert not hub.unknown
        assert hub.validated and set(hub.validated) == {"dataset"}  # the card YAML passed the Hub-side check
        # The card's load snippet and its freeatm block name the repo it now lives in.
        card = repo["files"]["README.md"].decode()
        assert 'load_dataset("me/scenes"' in card and "<user>/<dataset>" not in card and "repo_id: me/scenes" in card
        # The local folder stays as it was (its card, so its load cache too), with a note of where it went.
        assert "<user>/<dataset>" in local["README.md"].decode()
        from freeatm_hf.hub.push import pushed_repo

        assert pushed_repo(dataset_dir) == "me/scenes"
    assert TOKEN not in res.stdout + res.stderr
    assert all(TOKEN.encode() not in data for data in repo["files"].values())


def test_a_push_to_a_branch_creates_it_and_cards_name_it(dataset_dir, tmp_path):
    import shutil

    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.hub.push import pushed_repo, pushed_revision
    from freeatm_hf.models.simclr import SimCLRConfig

    folder = shutil.copytree(dataset_dir, tmp_path / "scenes")
    with FakeHub() as hub:
        assert run_cli(["push", str(folder), "me/scenes"], hub.url, tmp_path).returncode == 0
        # The Hub refuses commits to a branch that does not exist: push makes it first.
        res = run_cli(["push", str(folder), "me/scenes", "--revision", "v2"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        assert hub.repos[("dataset", "me/scenes")]["branches"] == {"main", "v2"}
        assert run_cli(["push", str(folder), "me/scenes", "--revision", "v2"], hub.url, tmp_path).returncode == 0
    assert (pushed_repo(folder), pushed_revision(folder)) == ("me/scenes", "v2")
    model = tmp_path / "model"
    model.mkdir()
    card = write_model_card(model, SimCLRConfig(), data={"dataset": str(folder)}, training={})
    assert card.data.datasets == ["me/scenes"] and "dataset: `me/scenes` (revision `v2`)." in card.text


def test_generate_with_push_to_hub_pushes_the_finished_folder(tmp_path):
    out = tmp_path / "ds2"
    with FakeHub() as hub:
        res = run_cli(["generate", "--output_dir", str(out), "--num_images", "2", "--batch_size", "2",
                       "--num_inference_steps", "2", "--device", "cpu", "--push_to_hub", "gen"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        # The log says what happened, not every HTTP request of the push (httpx logs each at INFO).
        assert "INFO freeatm_hf" in res.stderr and "HTTP Request" not in res.stderr
        repo = hub.repos[("dataset", "me/gen")]
        assert repo["private"] is False
        local = local_files(out)
        assert repo["files"].keys() == local.keys()
        assert all(repo["files"][k] == v for k, v in local.items() if k != "README.md")
        # A name without its namespace: the pushed card names the repo the Hub put it in (the token's user).
        assert 'load_dataset("<user>/<dataset>"' in local["README.md"].decode()
        pushed = repo["files"]["README.md"].decode()
        assert 'load_dataset("me/gen"' in pushed and "repo_id: me/gen" in pushed and "<user>" not in pushed
        # Pushed again elsewhere, the card names its new repo only.
        assert run_cli(["push", str(out), "me/other"], hub.url, tmp_path).returncode == 0
        other = hub.repos[("dataset", "me/other")]["files"]["README.md"].decode()
        assert 'load_dataset("me/other"' in other and "me/gen" not in other
    assert TOKEN not in res.stdout + res.stderr


def test_a_regenerated_folder_pushed_again_replaces_the_repos_shards(tmp_path):
    """3 rows in 2 shards, then 1 row in 1: the repo must not keep the old shards next to the new one (the card's
    `data/train-*` would read 4 rows), nor the old example overlays, while a file added on the Hub outside the
    data stays."""
    import shutil

    out = tmp_path / "ds"
    with FakeHub() as hub:
        for n in (3, 1):
            generate_dataset(GenerateConfig(output_dir=str(out), num_images=n, batch_size=n, rows_per_shard=2,
                                            num_inference_steps=2, device="cpu"))
            assert run_cli(["push", str(out), "me/scenes"], hub.url, tmp_path).returncode == 0
            if n == 3:
                hub.repos[("dataset", "me/scenes")]["files"]["NOTES.md"] = b"by hand"  # added on the Hub
                shutil.rmtree(out)
        files = hub.repos[("dataset", "me/scenes")]["files"]
        assert sorted(f for f in files if f.startswith("data/")) == ["data/train-00000-of-00001.parquet"]
        assert files["data/train-00000-of-00001.parquet"] == (out / "data" / "train-00000-of-00001.parquet").read_bytes()
        assert files["NOTES.md"] == b"by hand"
        # The card's example overlays are the new rows' alone (the first shard's 2 rows made 2, then 1).
        local = sorted(p.relative_to(out).as_posix() for p in (out / "examples").rglob("*") if p.is_file())
        assert len(local) == 1 and sorted(f for f in files if f.startswith("examples/")) == local
        assert not hub.unknown


def test_private_asked_of_an_existing_public_repo_is_refused_before_any_upload(dataset_dir, tmp_path):
    from freeatm_hf.generate import GenerateConfig

    with FakeHub() as hub:
        assert run_cli(["push", str(dataset_dir), "me/scenes"], hub.url, tmp_path).returncode == 0
        assert hub.repos[("dataset", "me/scenes")]["private"] is False
        commits = len(hub.commits)
        res = run_cli(["push", str(dataset_dir), "me/scenes", "--private"], hub.url, tmp_path)
        assert res.returncode == 2 and "me/scenes exists and is public" in res.stderr and "nothing was uploaded" in res.stderr
        assert len(hub.commits) == commits
        # The Space alike (the viewer's code would go public).
        assert run_cli(["push-space", "me/viewer"], hub.url, tmp_path).returncode == 0
        res = run_cli(["push-space", "me/viewer", "--private"], hub.url, tmp_path)
        assert res.returncode == 2 and "me/viewer exists and is public" in res.stderr
        assert run_cli(["push-space", "me/fresh-viewer"], hub.url, tmp_path).returncode == 0
        assert not {"visibility", "private"} & set(hub.repos[("space", "me/fresh-viewer")]["request"])
        # Without --private a new repo takes the namespace's default: the request does not say public.
        assert run_cli(["push", str(dataset_dir), "me/fresh"], hub.url, tmp_path).returncode == 0
        assert "visibility" not in hub.repos[("dataset", "me/fresh")]["request"]  # huggingface_hub 2.x's field
        # Both repos of push-model --timm are checked before the first upload.
        hub._create({"type": "model", "organization": "me", "name": "enc-timm"})  # public, as the Hub makes it
        commits = len(hub.commits)
        res = run_cli(["push-model", str(dataset_dir), "me/enc", "--timm", "--private"], hub.url, tmp_path)
        assert res.returncode == 2 and "me/enc-timm exists and is public" in res.stderr
        assert len(hub.commits) == commits and ("model", "me/enc") not in hub.repos
    with pytest.raises(ValueError, match="--private is the visibility of --push_to_hub's repo"):
        GenerateConfig(output_dir=str(tmp_path / "x"), private=True)


def test_push_refuses_an_unfinished_folder(tmp_path):
    from freeatm_hf.hub.push import push_folder

    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="no README.md"):
        push_folder(tmp_path, "me/x")



def test_push_refuses_a_folder_of_the_other_kind_or_without_weights_or_shards_before_creating_any_repo(tmp_path, monkeypatch):
    import huggingface_hub

    from freeatm_hf.hub.push import push_folder

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: pytest.fail("reached the Hub"))
    model, data = tmp_path / "model", tmp_path / "scenes"
    for folder, marker in ((model, "config.json"), (data, "data/train-00000-of-00001.parquet")):
        (folder / marker).parent.mkdir(parents=True, exist_ok=True)
        (folder / marker).write_text("{}")
        (folder / "README.md").write_text("card")
    with pytest.raises(ValueError, match="looks like a model folder .* dataset repo: use freeatm push-model"):
        push_folder(model, "me/simclr")  # `freeatm push` defaults to a dataset repo
    with pytest.raises(ValueError, match="looks like a dataset folder .* model repo: use freeatm push \\(a dataset"):
        push_folder(data, "me/scenes", repo_type="model")
    # A folder without what the push replaces (weights, shards) would delete the published ones.
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        push_folder(model, "me/simclr", repo_type="model")
    # Nor sharded weights whose index names a shard the folder lacks (a save or copy cut short).
    write_weights(model / "model-00001-of-00002.safetensors", 1)
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(FileNotFoundError, match="lacks model-00002-of-00002.safetensors, which model.safetensors"):
        push_folder(model, "me/simclr", repo_type="model")
    (model / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="is no weight index"):
        push_folder(model, "me/simclr", repo_type="model")
    (data / "data" / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="holds no Parquet shards"):
        push_folder(data, "me/scenes")


def test_push_refuses_weights_cut_short_or_not_safetensors_before_creating_any_repo(tmp_path, monkeypatch):
    """A save or copy cut short leaves a `.safetensors` file no loader can read, which the push would publish in
    place of the repo's weights: refused, whether the file is whole weights or a shard an index names."""
    import huggingface_hub

    from freeatm_hf.hub.push import push_folder

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: pytest.fail("reached the Hub"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text("card")
    weights = model / "model.safetensors"
    write_weights(weights, 1, 2, 3)
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-4])  # the last float never written
    with pytest.raises(ValueError, match=r"model\.safetensors is no complete safetensors file .*cut short.*save it "
                                         "again"):
        push_folder(model, "me/simclr", repo_type="model")
    weights.write_bytes(whole[:8] + b"x" * (len(whole) - 8))  # a header's length, but no JSON there
    with pytest.raises(ValueError, match=r"model\.safetensors is no complete safetensors file \(JSONDecodeError.*"
                                         "save it again"):
        push_folder(model, "me/simclr", repo_type="model")
    weights.unlink()
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    for i, shard in enumerate(shards.values()):
        write_weights(model / shard, i)
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    last = model / "model-00002-of-00002.safetensors"
    last.write_bytes(last.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors is no complete safetensors file"):
        push_folder(model, "me/simclr", repo_type="model")
    write_weights(last, 1)  # saved again: whole weights go on to the Hub
    with pytest.raises(pytest.fail.Exception, match="reached the Hub"):
        push_folder(model, "me/simclr", repo_type="model")


def test_train_push_to_hub_uploads_the_folder_with_the_freeatm_card_and_push_model_too(tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "simclr"
    with FakeHub() as hub:
        res = run_cli(["train", "simclr", "recipes/contrastive_cpu_smoke.yaml", "--output_dir", str(out),
                       "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--push_to_hub", "--hub_model_id", "me/simclr-atm",
                       "--hub_token", TOKEN, "--hub_revision", "exp1"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        assert hub.repos[("model", "me/simclr-atm")]["branches"] == {"main", "exp1"}  # --hub_revision's branch
        files = hub.repos[("model", "me/simclr-atm")]["files"]
        assert {"README.md", "config.json", "model.safetensors"} <= set(files)
        # The finished model only: Trainer's checkpoints stay home, and no pickled argument holds the token.
        assert (out / "checkpoint-1").is_dir() and not [f for f in files if f.startswith("checkpoint-")]
        assert not [f for f, data in files.items() if TOKEN.encode() in data]
        assert not [p for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
        # Nothing pushed names a place on this machine (but Trainer's own pickled arguments, as its push has them):
        # the card's facts name the never-pushed dataset as a local folder; the local copy keeps its path.
        local_paths = (str(tmp_path).encode(), str(ROOT).encode())
        assert not [f for f, data in files.items() if f != "training_args.bin" and any(p in data for p in local_paths)]
        assert json.loads(files["card_info.json"])["data"]["dataset"] == "./example_dataset"
        assert json.loads((out / "card_info.json").read_text())["data"]["dataset"] == str(
            ROOT / "spaces" / "mask_viewer" / "example_dataset")
        # Pushed to --hub_revision's branch: the card's snippets load that branch.
        assert 'from_pretrained("me/simclr-atm", revision="exp1")' in files["README.md"].decode()
        from freeatm_hf.hub.push import named_repo

        assert files["README.md"].decode() == named_repo((out / "README.md").read_text(), "<user>/<repo>",
                                                         "me/simclr-atm", "exp1")
        # A name without a namespace lands under the token's user, and the card and the timm repo say so.
        res = run_cli(["push-model", str(out), "again", "--timm"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        assert hub.repos[("model", "me/again")]["files"]["model.safetensors"] == files["model.safetensors"]
        # --timm: the encoder as its own repo, named as the card's timm snippet says, loadable by stock timm.
        exported = hub.repos[("model", "me/again-timm")]["files"]
        assert {"README.md", "config.json", "model.safetensors"} <= set(exported)
        timm_card = ModelCard(exported["README.md"].decode())
        assert timm_card.data.library_name == "timm" and 'hf-hub:me/again-timm' in timm_card.text
        again = hub.repos[("model", "me/again")]["files"]["README.md"].decode()
        assert "hf-hub:me/again-timm" in again  # the name the card promises
        # The snippet the card promises, verbatim, in stock timm through the Hub's download API.
        load = ("import sys, timm, torch; m = timm.create_model('hf-hub:me/again-timm', pretrained=True).eval(); "
                "assert 'freeatm_hf' not in sys.modules; print(tuple(m(torch.zeros(1, 3, 64, 64)).shape))")
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "timm_home")}
        res_timm = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, cwd=str(tmp_path),
                                  env=env)
        assert res_timm.returncode == 0, res_timm.stderr[-2000:]
        # --exports: the card's torchvision snippet, verbatim, gives the pooled features (not a random fc's logits).
        res = run_cli(["push-model", str(out), "me/tv", "--exports"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        card_text = hub.repos[("model", "me/tv")]["files"]["README.md"].decode()
        snippet = card_text[card_text.index("# Stock torchvision"):].split("```")[0]
        check = snippet + "\nprint(tuple(resnet.eval()(torch.zeros(1, 3, 64, 64)).shape))"
        res_tv = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=str(tmp_path),
                                env=env)
        assert res_tv.returncode == 0, res_tv.stderr[-2000:]
        assert res_tv.stdout.split()[-2:] == ["(1,", "512)"]  # resnet18's features, strictly loaded
        # A branch push sends the timm export to the same branch (it went to main) and says how timm reads it.
        res = run_cli(["push-model", str(out), "again", "--timm", "--revision", "v2"], hub.url, tmp_path)
        assert res.returncode == 0, res.stderr
        assert hub.repos[("model", "me/again-timm")]["branches"] == {"main", "v2"}
        assert "hf-hub:me/again-timm@v2" in hub.repos[("model", "me/again-timm")]["files"]["README.md"].decode()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "freeatm_hf" and "freeatm" in card.data.tags  # ours, not Trainer's
    assert TOKEN not in res.stdout + res.stderr


def test_the_loopback_hub_validates_card_metadata_as_the_hub(in_process_hub):
    from huggingface_hub import ModelCard

    ModelCard("# A card without metadata\n").validate()  # valid on the Hub
    # A metadata value holding the block's own marker.
    ModelCard("---\nlicense: mit\nmodel_name: 'simclr: --- attention pooled'\n---\n# Title\n").validate()
    assert in_process_hub.validated == ["model"] * 2


def test_a_pushed_dataset_loads_by_its_repo_id_through_the_loopback_hub(dataset_dir, tmp_path):
    """`load_dataset("me/scenes")` (the card's snippet, and `freeatm space --dataset me/scenes`) lists the repo
    through the Hub's tree API, folders and direct children as the Hub answers."""
    import datasets

    with FakeHub() as hub:
        assert run_cli(["push", str(dataset_dir), "me/scenes"], hub.url, tmp_path).returncode == 0
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
               "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf_home")}
        res = subprocess.run([sys.executable, "-c", "import datasets; ds = datasets.load_dataset('me/scenes', "
                              "split='train'); print(len(ds), sorted(ds.features))"],
                             env=env, capture_output=True, text=True)
    local = datasets.load_dataset(str(dataset_dir), split="train")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[0] == str(len(local))
    assert all(name in res.stdout for name in local.features)


def test_train_refuses_a_private_push_to_a_public_repo_before_training(tmp_path):
    out = tmp_path / "simclr"
    with FakeHub() as hub:
        hub._create({"type": "model", "organization": "me", "name": "simclr-atm"})  # exists, public
        res = run_cli(["train", "simclr", "recipes/contrastive_cpu_smoke.yaml", "--output_dir", str(out),
                       "--push_to_hub", "--hub_model_id", "me/simclr-atm", "--hub_private_repo", "true"],
                      hub.url, tmp_path)
        assert res.returncode == 2 and "me/simclr-atm exists and is public" in res.stderr
        assert "push without --hub_private_repo true" in res.stderr
        assert not out.exists() and not hub.commits  # nothing trained, nothing uploaded


def test_a_stock_export_folder_of_earlier_weights_leaves_the_repo_whole(tmp_path, in_process_hub):
    """A retrained folder whose `vit/` export was made from its earlier weights: the push removes every file of
    that export from the repo and uploads none of them (the repo would serve another model's encoder)."""
    from huggingface_hub import HfApi

    from freeatm_hf.hub.export import EXPORTS_RECORD
    from freeatm_hf.hub.model_card import weights_fingerprint
    from freeatm_hf.hub.push import push_folder

    folder = tmp_path / "mae"
    (folder / "vit").mkdir(parents=True)
    write_weights(folder / "model.safetensors", 1)  # the first run
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("# a model\n")
    (folder / "vit" / "config.json").write_text("{}")
    write_weights(folder / "vit" / "model.safetensors", 2)  # its encoder
    (folder / ".freeatm").mkdir()
    (folder / EXPORTS_RECORD).write_text(json.dumps({"vit": weights_fingerprint(folder)}))
    push_folder(folder, "me/mae", repo_type="model")
    assert {"vit/config.json", "vit/model.safetensors"} <= set(HfApi().list_repo_files("me/mae"))
    write_weights(folder / "model.safetensors", 3)  # the second run
    push_folder(folder, "me/mae", repo_type="model")
    files = set(HfApi().list_repo_files("me/mae"))
    assert "model.safetensors" in files and not {f for f in files if f.startswith("vit")}


def test_a_checkpoint_resaved_sharded_or_whole_replaces_the_repos_weights(tmp_path, in_process_hub):
    """Weights saved in shards (`model-*-of-*.safetensors` + their index), then whole, then in shards again: each
    push leaves the repo with this folder's weight files alone (no index or shard of the run before, which would
    name files of other weights), and `from_pretrained(repo_id)` loads this run's weights."""
    import torch
    from huggingface_hub import HfApi
    from transformers import AutoModel

    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.hub.push import push_folder
    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    folder = tmp_path / "ckpt"
    model = SimCLRModel(SimCLRConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8))
    for run, shard in enumerate(["10MB", "1GB", "10MB"]):
        with torch.no_grad():  # retrained
            model.backbone.conv1.weight.fill_(run)
        for old in [*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json")]:
            old.unlink()  # what a retraining into a fresh output_dir leaves
        model.save_pretrained(folder, max_shard_size=shard)
        write_model_card(folder, model.config, data={"dataset": "me/scenes"}, training={})
        push_folder(folder, "me/simclr", repo_type="model")
        here = sorted(p.name for p in folder.iterdir() if "safetensors" in p.name)
        assert (len(here) > 2) == (shard == "10MB")  # really sharded, or really whole
        repo = sorted(f for f in HfApi().list_repo_files("me/simclr", repo_type="model") if "safetensors" in f)
        assert repo == here
        loaded = AutoModel.from_pretrained("me/simclr")
        assert torch.equal(loaded.backbone.conv1.weight, torch.full_like(loaded.backbone.conv1.weight, run))


def test_a_model_pushed_again_keeps_the_weights_others_added_in_folders_of_their_own(tmp_path, in_process_hub):
    """The push replaces the checkpoint's weights, the files at the repo's root; `*.safetensors` (fnmatch's `*`
    crosses `/`) also deleted weights added elsewhere in subfolders (an EMA copy, another framework's conversion)."""
    from huggingface_hub import HfApi

    from freeatm_hf.hub.push import push_folder

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("# a model\n")
    write_weights(folder / "model-00001-of-00002.safetensors", 1)
    write_weights(folder / "model-00002-of-00002.safetensors", 2)
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    write_weights(folder / "model[ema].safetensors", 3)  # a name that is no pattern
    push_folder(folder, "me/simclr", repo_type="model")
    added = ["ema/model.safetensors", "ema/model.safetensors.index.json", "mlx/weights[1].safetensors"]
    for rel in added:
        HfApi().upload_file(path_or_fileobj=b"added on the Hub", path_in_repo=rel, repo_id="me/simclr")
    for old in folder.glob("model*"):
        old.unlink()  # retrained, saved whole
    write_weights(folder / "model.safetensors", 4)  # the second run
    push_folder(folder, "me/simclr", repo_type="model")
    files = set(HfApi().list_repo_files("me/simclr"))
    assert {f for f in files if "safetensors" in f} == {"model.safetensors", *added}


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once the socket closes: nothing listens there


def test_a_push_that_cannot_reach_the_hub_says_so_in_one_line_with_the_command_to_push_again(dataset_dir, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    note = dataset_dir / ".freeatm" / "pushed.json"  # an earlier test's push may have left one
    before = note.read_text() if note.exists() else None
    res = run_cli(["push", str(dataset_dir), "unreached/scenes"], endpoint, tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert f"could not reach the Hub at {endpoint} (ConnectError" in res.stderr
    assert f"push again with `freeatm push {dataset_dir} unreached/scenes` when" in res.stderr
    assert (note.read_text() if note.exists() else None) == before  # no push noted


def test_an_unreachable_timm_push_names_the_command_that_pushes_it_again(tmp_path, monkeypatch):
    """The timm export is pushed from a temporary folder: pushing again starts from the checkpoint."""
    import huggingface_hub.constants as c

    from freeatm_hf.hub.push import HubUnreachable, push_folder, push_timm_export

    from .test_stock_exports import checkpoint

    checkpoint("mae", tmp_path / "ckpt")
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubUnreachable, match=f"`freeatm push-model {tmp_path / 'ckpt'} me/enc --timm`"):
        push_timm_export(tmp_path / "ckpt", "me/enc-timm", token="hf_test", source_repo="me/enc")
    (tmp_path / "ckpt" / "README.md").write_text("# enc\n")
    with pytest.raises(HubUnreachable, match=f"`freeatm push {tmp_path / 'ckpt'} me/enc --repo_type model`"):
        push_folder(tmp_path / "ckpt", "me/enc", repo_type="model", token="hf_test")


def test_the_command_that_pushes_again_keeps_the_privacy_and_the_branch_asked_for(tmp_path, monkeypatch):
    """A push with --private or --revision that could not reach the Hub named a command without them: run as said,
    it would create the repo with the namespace's default visibility (public, for a user) and push to main."""
    import huggingface_hub.constants as c

    from freeatm_hf.hub.push import HubUnreachable, push_folder, push_timm_export

    from .test_stock_exports import checkpoint

    folder = tmp_path / "my ckpt"  # a space: the command must still be one the shell reads back as given
    checkpoint("mae", folder)
    (folder / "README.md").write_text("# enc\n")
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubUnreachable, match=re.escape(f"`freeatm push '{folder}' me/enc --repo_type model --private "
                                                       "--revision dev`")):
        push_folder(folder, "me/enc", repo_type="model", private=True, revision="dev", token="hf_test")
    with pytest.raises(HubUnreachable, match=re.escape(f"`freeatm push-model '{folder}' me/enc --private "
                                                       "--revision dev --timm`")):
        push_timm_export(folder, "me/enc-timm", private=True, token="hf_test", source_repo="me/enc", revision="dev")


def test_a_push_in_offline_mode_says_so_with_the_command_to_push_again(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 (left set from an offline run) stops huggingface_hub before any request: as unreachable a
    Hub as a dead network, said the same way, with the cause kept for a traceback."""
    import huggingface_hub.constants as c
    import torch
    from huggingface_hub.errors import OfflineModeIsEnabled
    from safetensors.torch import save_file

    from freeatm_hf.hub.push import HubUnreachable, push_folder

    (tmp_path / "ckpt").mkdir()  # what a push checks for: a card, a config, weights
    for name, text in (("README.md", "# enc\n"), ("config.json", "{}")):
        (tmp_path / "ckpt" / name).write_text(text)
    save_file({"w": torch.zeros(1)}, tmp_path / "ckpt" / "model.safetensors")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable, match=f"push again with `freeatm push {tmp_path / 'ckpt'} me/enc --repo_type "
                                             "model` when") as raised:
        push_folder(tmp_path / "ckpt", "me/enc", repo_type="model", token="hf_test")
    assert isinstance(raised.value.__cause__, OfflineModeIsEnabled)


def test_an_evaluation_of_a_hub_dataset_records_the_commit_it_read(tmp_path, monkeypatch):
    """Evaluated without --revision, the results said `"revision": null`, which names no data: they name the commit
    the rows were read at, asked of the Hub before loading (and the rows loaded at that commit)."""
    from datasets import Dataset
    from huggingface_hub import HfApi
    from PIL import Image

    from freeatm_hf.hub.model_card import RESULTS_FILE
    from tests.eval.test_frozen_eval import tiny_checkpoint

    folder = tmp_path / "labels"
    (folder / "data").mkdir(parents=True)
    for split, n in (("train", 6), ("test", 4)):
        Dataset.from_dict({"image": [Image.new("RGB", (32, 32), (40 * i, 90, 0)) for i in range(n)],
                           "label": [i % 2 for i in range(n)]}).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("simclr").save_pretrained(ckpt)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)  # this process uploads; the evaluation runs in its own
    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.url, token=TOKEN)
        api.create_repo("me/labels", repo_type="dataset")
        api.upload_folder(repo_id="me/labels", repo_type="dataset", folder_path=str(folder))
        commit = hub.head("dataset", "me/labels")
        res = run_cli(["eval", "knn", "--model", str(ckpt), "--dataset", "me/labels", "--image_size", "32", "--k", "3",
                       "--batch_size", "4", "--no_linear_probe", "--device", "cpu"], hub.url, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (result,) = json.loads((ckpt / RESULTS_FILE).read_text())
    assert result["dataset"] == "me/labels" and result["revision"] == commit and commit != "0" * 40


def test_a_timm_exports_card_names_the_data_and_kind_of_run_the_checkpoints_card_does(tmp_path, in_process_hub):
    """The timm repo holds the checkpoint's weights: its card carried no `datasets` and no attention-masks/baseline
    tag, and named the method by its id ("simclr"), beside a checkpoint card that has all three."""
    from huggingface_hub import ModelCard

    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.hub.push import push_timm_export

    from .test_stock_exports import checkpoint

    folder = tmp_path / "ckpt"
    model = checkpoint("mae", folder)  # guided: beta_max > 0
    write_model_card(folder, model.config, data={"dataset": "me/scenes", "data_mode": "synthetic"}, training={})
    push_timm_export(folder, "me/enc-timm", source_repo="me/enc")
    timm_card = ModelCard(in_process_hub.repos[("model", "me/enc-timm")]["files"]["README.md"].decode())
    card = ModelCard.load(folder / "README.md")
    assert timm_card.data.datasets == card.data.datasets == ["me/scenes"]
    kind = {"attention-masks", "baseline"}
    assert kind & set(timm_card.data.tags) == kind & set(card.data.tags) == {"attention-masks"}
    assert "the image encoder of MAE (freeatm_hf)" in timm_card.text


def _hub_calls(card: str) -> list[tuple[str, list, dict]]:
    """Every call in the card's Python snippets whose first argument is a string: (name, args, keywords)."""
    import ast

    calls = []
    for block in card.split("```python")[1:]:
        for node in ast.walk(ast.parse(block.split("```")[0])):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                calls.append((name, [ast.literal_eval(a) for a in node.args if isinstance(a, ast.Constant)],
                              {k.arg: ast.literal_eval(k.value) for k in node.keywords}))
    return calls


@pytest.mark.parametrize("method", ["simclr", "mae", "blip"])
def test_a_card_pushed_to_a_branch_loads_that_branch_in_each_snippet(method, dataset_dir, tmp_path, in_process_hub):
    """Pushed with --revision v2, the card lives on v2 but its snippets loaded the main branch: another version's data or
    weights, or nothing where the repo's main has none (`push-model --timm --revision` sends the timm export to v2)."""
    import shutil

    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.hub.push import push_folder

    from .test_stock_exports import checkpoint

    folder = tmp_path / "ckpt"
    model = checkpoint(method, folder)
    write_model_card(folder, model.config, data={"dataset": "me/scenes"}, training={})
    scenes = shutil.copytree(dataset_dir, tmp_path / "scenes")
    for path, repo_type, repo_id in ((folder, "model", "me/enc"), (scenes, "dataset", "me/scenes")):
        push_folder(path, repo_id, repo_type=repo_type, revision="v2")
        card = in_process_hub.repos[(repo_type, repo_id)]["files"]["README.md"].decode()
        calls = [(name, args, kw) for name, args, kw in _hub_calls(card) if args[0].startswith(repo_id)]
        loaders = {"model": {"from_pretrained", "hf_hub_download"}, "dataset": {"load_dataset"}}[repo_type]
        assert calls and {name for name, _, _ in calls} <= loaders
        assert all(kw.get("revision") == "v2" for _, _, kw in calls), calls
        timm_ids = [a[0] for name, a, _ in _hub_calls(card) if name == "create_model"]
        assert timm_ids == ([] if repo_type == "dataset" else ["hf-hub:me/enc-timm@v2"])
    # Pushed to the main branch, the snippets stay as plain as before.
    push_folder(folder, "me/plain", repo_type="model")
    card = in_process_hub.repos[("model", "me/plain")]["files"]["README.md"].decode()
    assert all("revision" not in kw for _, _, kw in _hub_calls(card)) and "hf-hub:me/plain-timm\"" in card


def test_pushing_an_unchanged_folder_again_makes_no_commit_and_a_changed_card_one(dataset_dir, tmp_path,
                                                                                   in_process_hub):
    """As on the Hub, whose preupload answer gives each file it holds by its oid: a re-push sends only what changed."""
    import shutil

    from freeatm_hf.hub.push import push_folder

    folder = shutil.copytree(dataset_dir, tmp_path / "scenes")
    first = push_folder(folder, "me/scenes")
    pushed = dict(in_process_hub.repos[("dataset", "me/scenes")]["files"])
    assert len(in_process_hub.commits) == 2  # the folder, then its card named for the repo
    again = push_folder(folder, "me/scenes")
    assert again.url.rsplit("/", 1)[1] == first.url.rsplit("/", 1)[1] and len(in_process_hub.commits) == 2
    assert in_process_hub.repos[("dataset", "me/scenes")]["files"] == pushed
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nA note by hand.\n")
    push_folder(folder, "me/scenes")
    assert [(c["message"], sorted(c["files"]), c["deleted"]) for c in in_process_hub.commits[2:]] == [
        (f"{in_process_hub.commits[0]['message']}: card", ["README.md"], [])]


def test_a_timm_export_pushed_to_a_branch_links_its_checkpoint_on_that_branch(tmp_path, in_process_hub):
    """`push-model --timm --revision v2`: the timm card linked the checkpoint's repo page, its main branch, whose card
    may describe other weights (or none): the weights it was exported from are on v2."""
    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.hub.push import push_folder, push_timm_export

    from .test_stock_exports import checkpoint

    folder = tmp_path / "ckpt"
    write_model_card(folder, checkpoint("simclr", folder).config, data={"dataset": "me/scenes"}, training={})
    push_folder(folder, "me/enc", repo_type="model", revision="v2")
    push_timm_export(folder, "me/enc-timm", source_repo="me/enc", revision="v2")
    card = in_process_hub.repos[("model", "me/enc-timm")]["files"]["README.md"].decode()
    assert "[me/enc (branch `v2`)](https://huggingface.co/me/enc/tree/v2)" in card
    push_timm_export(folder, "me/plain-timm", source_repo="me/plain")
    card = in_process_hub.repos[("model", "me/plain-timm")]["files"]["README.md"].decode()
    assert "[me/plain](https://huggingface.co/me/plain)," in card
