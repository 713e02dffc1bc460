"""Dataset card metadata the Hub validates."""

import json
import os

import datasets
import pytest


def test_size_categories_are_the_hubs_own_at_every_scale():
    from freeatm_hf.hub.cards import size_category

    path = os.path.join(os.path.dirname(datasets.__file__), "utils", "resources", "size_categories.json")
    known = json.load(open(path))
    cases = {0: "n<1K", 999: "n<1K", 1_000: "1K<n<10K", 9_999_999: "1M<n<10M", 10_000_000: "10M<n<100M",
             2_000_000_000: "1B<n<10B", 10**13: "n>1T"}
    for rows, want in cases.items():
        assert size_category(rows) == want and want in known
    # Every tier the Hub lists (but 'unknown') is reached, in its order.
    tiers = [size_category(10**k) for k in range(2, 14)]
    assert list(dict.fromkeys(tiers)) == [c for c in known if c != "unknown"]


@pytest.mark.parametrize("rows", [12, 50_000_000])
def test_a_rendered_card_carries_its_size_category(rows):
    from datasets import Features, Value

    from freeatm_hf.hub.cards import render_dataset_card

    card = render_dataset_card(Features({"prompt": Value("string")}), {"license": "other"}, {"num_rows": rows})
    assert card.data.size_categories == ["n<1K" if rows == 12 else "10M<n<100M"]


def test_a_dataset_card_names_local_files_by_name_not_by_their_place_on_this_machine(tmp_path):
    """The card is what gets pushed: a local pipeline folder and a prompts file appear by name (the prompts by
    their hash too); the full paths stay in the resume state, which is never pushed."""
    import shutil

    from huggingface_hub import DatasetCard

    from freeatm_hf.data.reading import generation_settings
    from freeatm_hf.generate import GenerateConfig
    from freeatm_hf.generate.run import generate_dataset
    from freeatm_hf.toy.model import MODEL_DIR

    private = tmp_path / "home" / "alice" / "private"
    pipeline = shutil.copytree(MODEL_DIR, private / "my-shapes")
    prompts = private / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "a red circle and a blue star on a plain background",
                                   "nouns": ["red circle", "blue star"]}) + "\n")
    out = tmp_path / "ds"
    generate_dataset(GenerateConfig(output_dir=str(out), pipeline=str(pipeline), prompts_file=str(prompts),
                                    num_images=1, batch_size=1, num_inference_steps=2, device="cpu"))
    text = (out / "README.md").read_text()
    assert str(private) not in text and str(tmp_path) not in text
    generation = DatasetCard(text).data.to_dict()["freeatm"]["generation"]
    assert (generation["pipeline"], generation["pipeline_source"], generation["prompts_file"]) == (
        "my-shapes", "local", "prompts.jsonl")
    assert len(generation["prompts_sha256"]) == 64 and generation_settings(str(out))["pipeline"] == "my-shapes"
    settings = json.loads((out / ".freeatm" / "settings.json").read_text())
    assert settings["pipeline"] == str(pipeline) and settings["prompts_file"] == str(prompts)


def test_an_augmenter_is_named_by_its_model_alone():
    from freeatm_hf.hub.cards import public_generation

    assert public_generation({"augmenter": "http://10.0.0.5:8000/v1#qwen2.5"})["augmenter"] == (
        "OpenAI-compatible server#qwen2.5")
    assert public_generation({"augmenter": "/home/alice/llm/qwen"})["augmenter"] == "qwen"
    assert public_generation({"augmenter": "Qwen/Qwen2.5-0.5B-Instruct"})["augmenter"] == "Qwen/Qwen2.5-0.5B-Instruct"
    hub = {"pipeline": "stable-diffusion-v1-5/stable-diffusion-v1-5", "pipeline_source": "hub"}
    assert public_generation(hub) == hub


def test_a_list_the_settings_hold_twice_is_written_out_twice_not_as_a_yaml_alias():
    # The capture's down factors are the run's: the card's YAML said `down_factors: &id001` and `*id001`.
    import yaml

    from freeatm_hf.hub.cards import public_generation

    factors = [1, 2]
    out = public_generation({"down_factors": factors, "capture": {"down_factors": factors, "include_mid": False}})
    assert out == {"down_factors": [1, 2], "capture": {"down_factors": [1, 2], "include_mid": False}}
    text = yaml.dump(out)
    assert "&id" not in text and "*id" not in text and yaml.safe_load(text) == out


def test_an_example_prompt_cannot_add_links_or_markup_to_the_card():
    """Prompts come from a user's file or an LLM; on a public card one could close the example's alt text and
    add a link or image of its own."""
    import re

    from datasets import Features, Value

    from freeatm_hf.hub.cards import render_dataset_card

    evil = "a cat](http://evil.example/x.png) ![x](http://evil.example/y) *loud*\nsecond line"
    card = render_dataset_card(Features({"prompt": Value("string")}), {"license": "other"}, {"num_rows": 1},
                               examples=[{"path": "examples/0.png", "prompt": evil}])
    examples = card.text[card.text.index("## Examples"):]
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", examples)  # where an unescaped `](` links to
    assert targets == ["examples/0.png"]
    assert "second line" in card.text and "\nsecond line" not in card.text
    assert not re.search(r"(?<!\\)\*loud", card.text)
    plain = render_dataset_card(Features({"prompt": Value("string")}), {"license": "other"}, {"num_rows": 1},
                                examples=[{"path": "examples/0.png", "prompt": "a golden retriever in a t-shirt"}])
    assert "![a golden retriever in a t-shirt](examples/0.png)" in plain.text


def test_a_dataset_cards_license_and_tags_are_the_ones_asked_for():
    """The Hub reads the license and tags from the card's YAML: the generation's license (a model's terms may
    bind its outputs), and a caller's extra tags, as huggingface_hub parses them back."""
    from datasets import Features, Value
    from huggingface_hub import DatasetCard

    from freeatm_hf.hub.cards import render_dataset_card

    card = render_dataset_card(Features({"prompt": Value("string")}), {"license": "creativeml-openrail-m"},
                               {"num_rows": 1}, extra_tags=["flux"])
    data = DatasetCard(str(card)).data
    assert data.license == "creativeml-openrail-m"
    assert {"freeatm", "synthetic", "attention-masks", "flux"} <= set(data.tags)


def test_a_private_server_or_folder_behind_the_augmenter_stays_off_the_card(tmp_path, monkeypatch):
    from freeatm_hf.hub.cards import public_generation

    assert public_generation({"augmenter": "https://llm.corp.internal:8443/v1#qwen2.5"})["augmenter"] == (
        "OpenAI-compatible server#qwen2.5")
    # A local model folder given relative to where the command ran (it looks like a Hub id): by its name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llms" / "qwen").mkdir(parents=True)
    assert public_generation({"augmenter": "llms/qwen"})["augmenter"] == "qwen"


def test_the_generation_table_shows_each_setting_once_as_a_plain_value():
    """The table is for people: the capture the run resolved (here the model folder's factor weights, which the
    settings asked for leave unset) once, not again as a Python dict; no `None` or `False` in a Markdown card. The
    YAML keeps every setting as it was."""
    from datasets import Features, Value
    from huggingface_hub import DatasetCard

    from freeatm_hf.hub.cards import render_dataset_card

    capture = {"down_factors": [1, 2], "include_mid": False, "step_window": [0.5, 1.0],
               "factor_weights": {"1": 0.25, "2": 0.75}, "map_size": None, "mmdit_blocks": "double",
               "layer_weights": None}
    generation = {"pipeline": "shapes", "revision": None, "down_factors": [1, 2], "include_mid": False,
                  "factor_weights": None, "map_size": None, "layer_weights": None, "mmdit_blocks": "double",
                  "step_window": [0.5, 1.0], "capture": capture, "denoiser": "unet", "license": "other"}
    card = render_dataset_card(Features({"prompt": Value("string")}), generation, {"num_rows": 1})
    table = card.text[card.text.index("## Generation"):card.text.index("## Counts")]
    rows = dict(line.strip("| ").split(" | ") for line in table.splitlines()[4:] if line.startswith("| "))
    assert rows == {"pipeline": "`shapes`", "down_factors": "`[1, 2]`", "include_mid": "`no`",
                    "factor_weights": '`{"1": 0.25, "2": 0.75}`', "step_window": "`[0.5, 1.0]`",
                    "denoiser": "`unet`", "license": "`other`"}
    assert not any(s in table for s in ("None", "False", "{'"))
    assert DatasetCard(str(card)).data.to_dict()["freeatm"]["generation"] == generation


@pytest.mark.parametrize("generation, says", [
    ({"pipeline": "shapes", "pipeline_source": "built-in"},
     "here freeatm_hf's built-in `shapes` pipeline, which comes with freeatm_hf under its licence (Apache-2.0)."),
    ({"pipeline": "stable-diffusion-v1-5/stable-diffusion-v1-5", "pipeline_source": "hub"},
     "their licence is the generator's (see its model card)."),
])
def test_the_card_says_where_the_generators_licence_is_found(generation, says):
    """A built-in pipeline (the shipped shapes model, the random tiny ones) has no model card a reader could see:
    its terms are freeatm_hf's."""
    from datasets import Features, Value

    from freeatm_hf.hub.cards import render_dataset_card

    card = render_dataset_card(Features({"prompt": Value("string")}), {**generation, "license": "other"},
                               {"num_rows": 1})
    text = " ".join(card.text.split())
    assert says in text and ("see its model card" in text) == (generation["pipeline_source"] != "built-in")


def test_two_generated_folders_of_one_name_load_their_own_rows_with_plain_datasets(tmp_path):
    """`datasets` keys its cache of a local folder by the folder's name and the card's metadata, not its files:
    a second folder called `scenes` (another run's, or this one regenerated) with a card stating the same
    features gave the first one's rows. The card states the split's rows and bytes, as `push_to_hub` writes them,
    so other data has another key; `datasets` checks the row count against the files."""
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    from freeatm_hf.generate import GenerateConfig
    from freeatm_hf.generate.run import generate_dataset

    cache = str(tmp_path / "cache")
    for run, seed in (("a", 0), ("b", 7)):  # as many rows, other images
        out = tmp_path / run / "scenes"
        generate_dataset(GenerateConfig(output_dir=str(out), num_images=2, batch_size=2, num_inference_steps=2,
                                        device="cpu", seed=seed))
        shards = sorted((out / "data").glob("*.parquet"))
        written = [r for s in shards for r in pq.read_table(s, columns=["seed"]).column("seed").to_pylist()]
        assert load_dataset(str(out), split="train", cache_dir=cache)["seed"] == written == [seed, seed + 1]
    info = DatasetCard.load(out / "README.md").data.dataset_info
    assert [(s["name"], s["num_examples"]) for s in info["splits"]] == [("train", 2)]
    assert info["download_size"] == sum(s.stat().st_size for s in shards)
