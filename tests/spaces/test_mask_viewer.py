"""The mask viewer Space: API endpoints via gradio_client, file serving, publishing, and a real browser."""

import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freeatm_hf.spaces import load_app, space_dir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def app():
    module = load_app()
    demo = module.build_demo()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, css=module.CSS)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.local_url, verbose=False)


def test_space_folder_is_a_valid_gradio_space():
    from huggingface_hub import SpaceCard

    folder = space_dir()
    card = SpaceCard.load(folder / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.title
    assert "gradio" in (folder / "requirements.txt").read_text()
    assert (folder / "example_dataset" / "README.md").is_file()


def test_the_space_runs_a_python_its_requirements_install_on():
    """The Hub runs a Space on Python 3.10 unless its card says otherwise; freeatm_hf, diffusers 0.42 and
    transformers 5 need 3.11, so the pushed Space's `pip install -r requirements.txt` found no diffusers."""
    from importlib.metadata import PackageNotFoundError, metadata

    from huggingface_hub import SpaceCard
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    from freeatm_hf.spaces import space_requirements

    version = SpaceCard.load(space_dir() / "README.md").data.get("python_version")
    assert isinstance(version, str), version  # unquoted, YAML reads 3.10 as the float 3.1
    assert version in SpecifierSet(metadata("freeatm_hf")["Requires-Python"])
    for line in space_requirements().splitlines()[1:]:
        try:
            needs = metadata(Requirement(line).name)["Requires-Python"]
        except PackageNotFoundError:
            continue
        assert needs is None or version in SpecifierSet(needs), (line, needs)


def test_browse_endpoint_returns_masks_of_the_image_size(client):
    from datasets import load_dataset

    row = load_dataset(str(space_dir() / "example_dataset"), split="train")[2]
    view, text, soft, masks, summary, info = client.predict(2, 0.4, False, api_name="/browse")
    assert info.startswith("row 2 ") and [o["name"] for o in summary] == [o["name"] for o in row["objects"]]
    names = [o["name"] for o in row["objects"]]
    assert "".join(p["token"] for p in text["value"]) == row["prompt"]
    assert [p["token"] for p in text["value"] if p["class_or_confidence"]] == names
    assert list(text["color_map"]) == names  # each noun in its mask's colour
    w, h = row["image"].size
    assert Image.open(view).size[0] % w == 0 and Image.open(view).size[0] >= 256  # enlarged for display
    assert len(masks) == len(row["objects"])
    for m, o in zip(masks, row["objects"]):
        mask = np.asarray(Image.open(m["image"]))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        from freeatm_hf.masks import full_resolution_mask

        expected = full_resolution_mask(np.asarray(o["attention"]), (h, w), 0.4).mask
        assert np.array_equal(mask > 0, expected)
    assert [s["attention_peak"] for s in summary] == [round(o["attention_peak"], 4) for o in row["objects"]]


def test_objects_below_the_recommended_peak_are_flagged_as_likely_not_drawn():
    att = Image.fromarray(np.full((4, 4), 255, np.uint8))
    objects = [{"name": "star", "attention": att, "attention_peak": 0.01},
               {"name": "cross", "attention": att, "attention_peak": 0.2}, {"name": "old", "attention": att}]
    _, _, soft, masks, summary = load_app().render(Image.new("RGB", (8, 8)), "a star and a cross", objects, 0.4, 0.05)
    assert [c for _, c in soft] == [c for _, c in masks] == ["star (likely not drawn)", "cross", "old"]
    assert [s.get("likely_drawn") for s in summary] == [False, True, None]
    assert [s.get("attention_peak") for s in summary] == [0.01, 0.2, None]
    # Without a recommended cut, nothing is flagged.
    _, _, soft, _, summary = load_app().render(Image.new("RGB", (8, 8)), "a star", objects[:1], 0.4)
    assert soft[0][1] == "star" and "likely_drawn" not in summary[0]


def test_the_prompt_highlights_the_spans_the_generator_tracks_in_each_objects_colour():
    module = load_app()
    # The longer noun first, as Prompt.from_nouns places them: "ball" is the second one, not the one in "tennis ball".
    assert module.highlight("a tennis ball and a ball on a lawn", ["ball", "tennis ball"]) == [
        ("a ", None), ("tennis ball", "tennis ball"), (" and a ", None), ("ball", "ball"), (" on a lawn", None)]
    # A repeated noun: each occurrence its own label, so each keeps its mask's colour.
    assert module.highlight("a dog chasing a dog", ["dog", "dog"]) == [
        ("a ", None), ("dog", "dog #1"), (" chasing a ", None), ("dog", "dog #2")]
    att = Image.fromarray(np.full((4, 4), 255, np.uint8))
    text = module.render(Image.new("RGB", (8, 8)), "a dog chasing a dog",
                         [{"name": "dog", "attention": att}, {"name": "dog", "attention": att}], 0.4)[1]
    from freeatm_hf.viz import color

    assert text.color_map == {"dog #1": "#{:02x}{:02x}{:02x}".format(*color(0)),
                              "dog #2": "#{:02x}{:02x}{:02x}".format(*color(1))}


def test_the_enlarged_overlay_shows_the_masks_and_boxes_of_the_image_size():
    from freeatm_hf.masks import full_resolution_mask
    from freeatm_hf.viz import overlay

    att = Image.fromarray(np.array([[0, 40, 90, 0], [30, 255, 200, 10], [0, 120, 160, 0], [0, 0, 20, 0]], np.uint8))
    image = Image.new("RGB", (8, 8), (128, 128, 128))
    mask = full_resolution_mask(np.asarray(att), (8, 8), 0.4)
    view = np.asarray(overlay(image, [{"name": "x", "attention": att}], 0.4, boxes=False, labels=False, scale=6))
    painted = (view != 128).any(-1)
    assert np.array_equal(painted, np.kron(mask.mask, np.ones((6, 6), bool)))
    boxed = np.asarray(overlay(image, [{"name": "x", "attention": att}], 0.4, labels=False, scale=6))
    x0, y0, x1, y1 = (int(v * 6) for v in mask.bbox)
    outline = (boxed != view).any(-1)
    assert outline[y0, x0:x1].all() and outline[y1 - 1, x0:x1].all() and not outline[:y0].any()


def test_each_session_sees_its_own_last_generation_and_otsu_is_a_choice(tmp_path):
    """The threshold slider redraws the last generation of *this* session (a gr.State), and a model or dataset
    whose recommended threshold is "otsu" opens with the Otsu box ticked."""
    import json

    import gradio as gr

    from freeatm_hf.masks import full_resolution_mask
    from freeatm_hf.toy.model import MODEL_DIR

    module = load_app()
    (tmp_path / "freeatm.json").write_text(json.dumps({**json.loads((MODEL_DIR / "freeatm.json").read_text()),
                                                       "threshold": "otsu"}))
    demo = module.build_demo(pipeline=str(tmp_path))
    deps = {d.name: d for d in demo.fns.values()}
    gen, redraw = deps["generate"], next(d for d in demo.fns.values() if d.fn.__name__ == "regenerate_view")
    state = [c for c in gen.outputs if isinstance(c, gr.State)]
    assert len(state) == 1 and state[0] in redraw.inputs  # per session, not one dict for every user
    otsu_box = next(c for c in gen.inputs if isinstance(c, gr.Checkbox))
    assert otsu_box.value is True
    att = Image.fromarray(np.array([[0, 40, 90, 0], [30, 255, 200, 10], [0, 120, 160, 0], [0, 0, 20, 0]], np.uint8))
    last = (Image.new("RGB", (8, 8)), "an x", [{"name": "x", "attention": att}])
    masks = redraw.fn(0.9, True, last)[3]
    assert np.array_equal(np.asarray(masks[0][0]) > 0, full_resolution_mask(np.asarray(att), (8, 8), "otsu").mask)
    assert all(out is gr.skip() or isinstance(out, type(gr.skip())) for out in redraw.fn(0.4, False, None))


def test_the_server_address_is_left_to_gradio_unless_given(monkeypatch):
    """A Hub Space sets GRADIO_SERVER_NAME=0.0.0.0: a fixed default host would override it."""
    import gradio as gr

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    load_app().main([])
    assert seen["server_name"] is None and seen["server_port"] is None
    load_app().main(["--host", "0.0.0.0", "--port", "8080"])
    assert seen["server_name"] == "0.0.0.0" and seen["server_port"] == 8080 and seen["share"] is False
    load_app().main(["--share"])
    assert seen["share"] is True
    # `freeatm space` hands its arguments to the viewer.
    from freeatm_hf.cli import main as freeatm

    freeatm(["space", "--port", "8081"])
    assert seen["server_name"] is None and seen["server_port"] == 8081


@pytest.mark.parametrize("argv, says", [
    (["--port", "-1"], "a TCP port is 1 to 65535, got '-1'"),
    (["--port", "65536"], "a TCP port is 1 to 65535, got '65536'"),
    (["--pipeline", "/no/such/model"], "--pipeline /no/such/model: no such folder")])
def test_a_port_or_pipeline_folder_that_cannot_be_is_refused_before_the_viewer_starts(monkeypatch, capsys, argv, says):
    # A port out of range was a traceback from the socket; a missing pipeline folder was found by the first visitor.
    import gradio as gr

    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: pytest.fail("the viewer started"))
    with pytest.raises(SystemExit) as exited:
        load_app().main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_threshold_changes_the_masks(client):
    low = client.predict(0, 0.1, False, api_name="/browse")[3]
    high = client.predict(0, 0.9, False, api_name="/browse")[3]
    area = lambda gallery: sum((np.asarray(Image.open(m["image"])) > 0).sum() for m in gallery)  # noqa: E731
    assert area(low) > area(high)


def test_generate_endpoint_detects_nouns_and_returns_masks(client):
    # In the default pipeline's prompt language (shapes captions for the shipped shapes model).
    module = load_app()
    example, vocabulary = module.prompt_language("default")
    detected = module.detect_nouns(example, vocabulary)
    assert len(detected) == 2
    view, text, soft, masks, summary = client.predict(example, "", 3, 4, 0.4, False, api_name="/generate")
    assert [o["name"] for o in summary] == detected
    assert all(np.asarray(Image.open(m["image"])).shape == (64, 64) for m in masks)
    # Listed nouns are tracked as listed, even ones the vocabulary does not know.
    words = example.split()
    listed = client.predict(example, f"{words[-2]}, {words[1]}", 3, 4, 0.4, False, api_name="/generate")
    assert [o["name"] for o in listed[4]] == [words[-2], words[1]]


def test_no_file_outside_the_app_is_served(app):
    import httpx

    base = app.local_url.rstrip("/")
    for path in ["/etc/passwd", str(Path(__file__).resolve()), str(space_dir() / "app.py")]:
        r = httpx.get(f"{base}/gradio_api/file={path}")
        assert r.status_code in (403, 404), path


def test_push_space_uploads_a_space_that_runs_from_its_own_files(tmp_path, monkeypatch):
    import subprocess
    import sys

    from freeatm_hf import spaces
    from tests.hub.fake_hub import FakeHub

    with FakeHub() as hub:
        monkeypatch.setenv("HF_TOKEN", "hf_test")
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        spaces.push_space("me/viewer")
        repo = hub.repos[("space", "me/viewer")]
    assert repo["request"].get("sdk") == "gradio"
    folder = space_dir()
    local = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and "screenshots" not in p.parts}
    assert local <= set(repo["files"])
    # The package travels beside app.py (no git URL or index needed), with the shipped shapes model.
    assert {"freeatm_hf/__init__.py", "freeatm_hf/toy/assets/shapes-t2i/model_index.json"} <= set(repo["files"])
    assert not any("__pycache__" in f or f.startswith("freeatm_hf/_spaces") for f in repo["files"])
    reqs = repo["files"]["requirements.txt"].decode().splitlines()
    assert any(r.startswith("diffusers") for r in reqs) and not any("freeatm_hf" in r and "@" in r for r in reqs)
    assert "pyyaml>=6" in reqs and not any(r.startswith("gradio") for r in reqs)  # gradio: the Space's sdk_version
    # The Space as the Hub would run it: from its own files, importing its own copy of the package.
    space = tmp_path / "space"
    for rel, data in repo["files"].items():
        (space / rel).parent.mkdir(parents=True, exist_ok=True)
        (space / rel).write_bytes(data)
    probe = ("import app, freeatm_hf, pathlib; "
             "assert pathlib.Path(freeatm_hf.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()), "
             "freeatm_hf.__file__; print(app.EXAMPLE_DATASET.is_dir())")
    res = subprocess.run([sys.executable, "-c", probe], cwd=space, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0 and res.stdout.strip().endswith("True"), res.stderr[-2000:]


@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("FREEATM_REQUIRE_BROWSER"),
                    reason="Debian's chromium is not installed (.ci/run installs it and requires this test)")
def test_in_a_real_browser(app, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("FREEATM_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    def img_bytes(page, selector):
        src = page.locator(f"{selector} img").first.get_attribute("src")
        return page.request.get(src).body()

    def assert_maps_named(page, gallery, names):
        """Each map's caption is its object's, and lies inside the gallery's box: a fixed gallery height clipped
        square thumbnails, captions and all, so a visitor saw unnamed maps (the captions were still in the page)."""
        box = page.locator(gallery).bounding_box()
        captions = page.locator(f"{gallery} .caption-label")
        assert [c.split(" (")[0] for c in captions.all_inner_texts()] == names
        for i in range(captions.count()):
            c = captions.nth(i).bounding_box()
            assert box["y"] <= c["y"] and c["y"] + c["height"] <= box["y"] + box["height"], (gallery, i, c, box)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(app.local_url)
        page.locator("#browse-overlay img").first.wait_for(timeout=60_000)
        from datasets import load_dataset

        first = load_dataset(str(space_dir() / "example_dataset"), split="train")[0]
        assert first["objects"][0]["name"] in page.locator("#browse-prompt").inner_text()
        before = img_bytes(page, "#browse-overlay")
        for gallery in ("#browse-soft", "#browse-masks"):
            assert_maps_named(page, gallery, [o["name"] for o in first["objects"]])
        page.screenshot(path=str(shots / "browse.png"), full_page=True)

        number = page.locator("#browse-threshold input[type=number]")
        # Far from where the slider starts (the pipeline's measured threshold): a small map's values can jump
        # past two nearby thresholds at once, and an identical overlay keeps its (content-hashed) file name.
        start = float(number.input_value())
        from freeatm_hf.data.reading import dataset_threshold

        assert start == pytest.approx(dataset_threshold(str(space_dir() / "example_dataset")))  # its card's
        src = page.locator("#browse-overlay img").first.get_attribute("src")
        changed = "src => document.querySelector('#browse-overlay img') && document.querySelector('#browse-overlay img').src !== src"
        # A value typed while the page is still busy can be lost (seen once in a full CI run): type it again,
        # and leave the box (Tab) as a user would, before giving up.
        for attempt, value in enumerate(["0.05", "0.1", "0.15"] if start > 0.3 else ["0.9", "0.85", "0.8"]):
            number.fill(value)
            number.press("Enter")
            number.press("Tab")
            try:
                page.wait_for_function(changed, arg=src, timeout=20_000)
                break
            except Exception:
                if attempt == 2:
                    raise
        after = img_bytes(page, "#browse-overlay")
        a = np.asarray(Image.open(io.BytesIO(before)).convert("RGB"), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(after)).convert("RGB"), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).sum() > 0  # the overlay changed with the threshold

        page.get_by_role("tab", name="Generate").click()
        # A prompt in the language of the default pipeline (shapes captions for the shapes model), not the
        # pre-filled one, so the click must send the typed text.
        module = load_app()
        example, vocabulary = module.prompt_language("default")
        typed = example.replace("red", "green").replace("golden retriever", "tabby cat")
        nouns = module.detect_nouns(typed, vocabulary)
        assert len(nouns) == 2
        page.locator("#gen-prompt textarea").fill(typed)
        page.locator("#gen-button").click()
        page.locator("#gen-overlay img").first.wait_for(timeout=120_000)
        page.locator("#gen-masks img").first.wait_for(timeout=60_000)
        assert page.locator("#gen-masks img").count() >= 2
        assert nouns[0] in page.locator("#gen-prompt-highlight").inner_text()
        for gallery in ("#gen-soft", "#gen-masks"):
            assert_maps_named(page, gallery, nouns)
        page.screenshot(path=str(shots / "generate.png"), full_page=True)

        # On a phone: no map cut off at the gallery's right edge, no Otsu label cut off at its row's.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(app.local_url)
        phone.locator("#browse-masks img").first.wait_for(timeout=60_000)
        for gallery in ("#browse-soft", "#browse-masks"):
            wrap = phone.locator(f"{gallery} .grid-wrap")
            assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), gallery
            assert_maps_named(phone, gallery, [o["name"] for o in first["objects"]])
        text_right = phone.locator("#browse-otsu label span").last.evaluate(
            "e => { const r = document.createRange(); r.selectNodeContents(e); "
            "return r.getBoundingClientRect().right }")
        row = phone.locator("#browse-otsu").locator("xpath=..").bounding_box()
        assert text_right <= row["x"] + row["width"], (text_right, row)
        phone.screenshot(path=str(shots / "browse_phone.png"), full_page=True)
        browser.close()


def test_an_mmdit_dataset_and_pipeline_work_in_the_space(tmp_path):
    """A Flux-generated dataset (tiny pipeline) gets the same card and opens in the Space; live generation with
    that pipeline too."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    from freeatm_hf import cli
    from freeatm_hf.masks import full_resolution_mask

    out = tmp_path / "flux_scenes"
    cli.main(["generate", "--output_dir", str(out), "--pipeline", "tiny-flux", "--num_images", "2", "--batch_size", "2",
              "--num_inference_steps", "1", "--device", "cpu", "--height", "64", "--width", "48"])
    card = DatasetCard.load(out / "README.md")
    assert "freeatm" in card.data.tags and "| pipeline_class | `FluxPipeline` |" in card.text
    assert "joint-attention probabilities" in card.text and "cross-attention" not in card.text
    demo = load_app().build_demo(dataset=str(out), pipeline="tiny-flux")
    fns = {f.name: f.fn for f in demo.fns.values()}
    row = load_dataset(str(out), split="train")[1]
    view, text, soft, masks, summary, info = fns["browse"](1, 0.4, False)
    assert info.startswith("row 1 ") and [o["name"] for o in summary] == [o["name"] for o in row["objects"]]
    for (mask, name), o in zip(masks, row["objects"]):
        expected = full_resolution_mask(np.asarray(o["attention"]), (64, 48), 0.4).mask
        assert name == o["name"] and np.array_equal(np.asarray(mask) > 0, expected)
    view, text, soft, masks, summary, _ = fns["generate"]("a red car parked on a city street", "car, street", 0, 1, 0.4,
                                                          False)
    assert [s["name"] for s in summary] == ["car", "street"] and len(masks) == 2


def test_a_dataset_without_attention_maps_is_refused_when_the_viewer_starts(tmp_path):
    from datasets import Dataset

    (tmp_path / "plain" / "data").mkdir(parents=True)
    Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "label": [3]}).to_parquet(
        str(tmp_path / "plain" / "data" / "train.parquet"))
    with pytest.raises(ValueError, match="is not a freeatm dataset"):
        load_app().build_demo(str(tmp_path / "plain"))


def test_browsing_past_the_last_row_says_so_and_a_pipeline_that_fails_to_load_is_named(tmp_path):
    from datasets import load_dataset
    from gradio_client import Client

    n = len(load_dataset(str(space_dir() / "example_dataset"), split="train"))
    demo = load_app().build_demo(pipeline=str(tmp_path / "no-such-pipeline"))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        *_, info = client.predict(n + 5, 0.4, False, api_name="/browse")
        assert info.startswith(f"row {n - 1} (the last) ")
        with pytest.raises(Exception, match="could not load the pipeline .*no-such-pipeline"):
            client.predict("a red circle", "red circle", 0, 2, 0.4, False, api_name="/generate")
    finally:
        demo.close()


def test_a_damaged_row_is_named_in_the_page_and_the_others_still_browse(tmp_path):
    """A row whose image file is cut short, or is no image, was a bare "Error" (Gradio hides any error but its own)."""
    import gradio as gr
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "scenes"
    shutil.copytree(space_dir() / "example_dataset", folder)
    shard = next((folder / "data").glob("*.parquet"))
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[1]["image"]["bytes"] = rows[1]["image"]["bytes"][:200]
    rows[2]["image"]["bytes"] = b"not an image"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    browse = next(d for d in load_app().build_demo(str(folder)).fns.values() if d.name == "browse").fn
    for i in (1, 2):
        with pytest.raises(gr.Error, match=rf"row {i} cannot be shown \((OSError|UnidentifiedImageError): .+\); the "
                                           "other rows can"):
            browse(i, 0.4, False)
    assert browse(3, 0.4, False)[-1].startswith("row 3 · ")
    with pytest.raises(gr.Error, match="^'type a row number'$"):  # the viewer's own messages are left as they are
        browse(None, 0.4, False)


def test_a_visitors_row_number_cannot_make_the_space_hold_a_whole_stream(monkeypatch):
    """Rows are kept as their encoded files and decoded when shown; a request reads a bounded number of rows
    past those read, and the cache holds a bounded number."""
    import gradio as gr

    module = load_app()
    cache = module.RowCache(str(space_dir() / "example_dataset"))
    monkeypatch.setattr(cache, "READ_AHEAD", 2)
    monkeypatch.setattr(cache, "MAX_ROWS", 3)
    with pytest.raises(gr.Error, match="more than 2 rows past the 0 read so far"):
        cache.get(2)
    row = cache.get(1)
    assert isinstance(row["image"], Image.Image) and isinstance(row["objects"][0]["attention"], Image.Image)
    assert isinstance(cache.rows[1]["image"]["bytes"], bytes) and len(cache.rows) == 2  # kept encoded
    assert cache.get(2)["prompt"] and len(cache.rows) == 3
    with pytest.raises(gr.Error, match="keeps the first 3 rows"):
        cache.get(3)
    with pytest.raises(gr.Error, match="type a row number"):
        cache.get(None)


def test_a_thin_image_is_not_enlarged_past_the_longest_view_side():
    module = load_app()
    att = Image.fromarray(np.full((1, 4), 255, np.uint8))
    for size in ((3000, 1), (1, 2500), (8, 8)):
        view = module.render(Image.new("RGB", size), "an x", [{"name": "x", "attention": att}], 0.4)[0]
        assert max(view.size) <= max(module.MAX_VIEW_SIDE, *size)
        assert min(view.size) >= min(module.VIEW_SIDE, min(size) * (module.MAX_VIEW_SIDE // max(size)))


def test_live_generation_refuses_long_input_before_any_work():
    """A prompt of thousands of nouns took minutes to match (and held up every other visitor's request)."""
    import gradio as gr

    module = load_app()
    demo = module.build_demo(pipeline="no-such-pipeline")  # never loaded: each refusal comes first
    generate = next(d for d in demo.fns.values() if d.name == "generate").fn
    with pytest.raises(gr.Error, match="2000 characters at most"):
        generate("a cat " * 400, "", 0, 2, 0.4, False)
    with pytest.raises(gr.Error, match="track 32 nouns at most, not 40"):
        generate("a cat", ",".join(["cat"] * 40), 0, 2, 0.4, False)
    with pytest.raises(gr.Error, match="type a seed"):
        generate("a cat", "cat", None, 2, 0.4, False)
    with pytest.raises(gr.Error, match="could not load the pipeline"):  # what an acceptable request meets next
        generate("a cat", "cat", 0, 2, 0.4, False)


def test_visitors_browsing_at_once_read_the_stream_one_at_a_time():
    """Two events reading the one stream at once made its generator raise "already executing"."""
    import threading
    import time

    module = load_app()
    cache = module.RowCache(str(space_dir() / "example_dataset"))
    rows = cache._iter

    def slow():
        for row in rows:
            time.sleep(0.05)  # a remote shard's latency
            yield row

    cache._iter = slow()
    errors, barrier = [], threading.Barrier(4)

    def browse(i):
        barrier.wait()
        try:
            assert cache.get(i)["prompt"]
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=browse, args=(i,)) for i in (3, 5, 4, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache.rows) == 7


def test_live_generation_names_a_null_prompt_or_nouns():
    import gradio as gr

    demo = load_app().build_demo(pipeline="no-such-pipeline")
    generate = next(d for d in demo.fns.values() if d.name == "generate").fn
    with pytest.raises(gr.Error, match="type a prompt"):
        generate(None, None, 0, 2, 0.4, False)
    with pytest.raises(gr.Error, match="could not load the pipeline"):  # null nouns: detected from the prompt
        generate("a cat", None, 0, 2, 0.4, False)


def test_nouns_are_found_and_highlighted_where_the_generator_tracks_them():
    module = load_app()
    # Longer names first, then in prompt order: "cat" is not the one inside "tabby cat".
    assert module.detect_nouns("a cat near a tabby cat", ["cat", "tabby cat"]) == ["cat", "tabby cat"]
    assert module.detect_nouns("a tabby cat", ["cat", "tabby cat", "dog"]) == ["tabby cat"]
    assert module.highlight("ball on a lawn", ["ball"]) == [("ball", "ball"), (" on a lawn", None)]
    # A noun the text does not hold (a hand-made row): the others at their first free match.
    assert module.highlight("a cat and a cat", ["dog", "cat"]) == [("a ", None), ("cat", "cat"),
                                                                   (" and a cat", None)]


def test_a_rendered_row_keeps_the_image_shape_and_says_which_masks_are_empty():
    module = load_app()
    image = Image.new("RGB", (100, 70))  # wide, and not a divisor of the view side
    objects = [{"name": "x", "attention": ATT_DIAG}, {"name": "none", "attention": np.zeros((4, 4), np.uint8)}]
    view, _, soft, masks, summary = module.render(image, "an x and none", objects, 0.4)
    assert min(view.size) >= module.VIEW_SIDE and view.size[0] * 70 == view.size[1] * 100
    assert [s.size for s, _ in soft] == [view.size] * 2 and [m.size for m, _ in masks] == [image.size] * 2
    expected = full_resolution_mask_of(objects[0], image)
    assert summary[0]["empty"] is False and summary[0]["bbox"] == [round(v, 1) for v in expected.bbox]
    assert summary[1]["empty"] is True and summary[1]["bbox"] is None and summary[1]["area"] == 0


ATT_DIAG = np.eye(4, dtype=np.uint8) * 255


def full_resolution_mask_of(o, image):
    from freeatm_hf.masks import full_resolution_mask

    return full_resolution_mask(np.asarray(o["attention"]), (image.height, image.width), 0.4)


def test_the_viewer_starts_from_the_environments_dataset_and_pipeline(tmp_path, monkeypatch):
    """A Hub Space sets FREEATM_DATASET / FREEATM_PIPELINE rather than flags."""
    import json

    from datasets import Dataset

    from freeatm_hf.toy.model import MODEL_DIR

    (tmp_path / "plain" / "data").mkdir(parents=True)
    Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "label": [3]}).to_parquet(
        str(tmp_path / "plain" / "data" / "train.parquet"))
    monkeypatch.setenv("FREEATM_DATASET", str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="is not a freeatm dataset"):
        load_app().build_demo()
    monkeypatch.delenv("FREEATM_DATASET")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "freeatm.json").write_text(json.dumps({**json.loads((MODEL_DIR / "freeatm.json").read_text()),
                                                                 "threshold": "otsu"}))
    monkeypatch.setenv("FREEATM_PIPELINE", str(tmp_path / "model"))
    demo = load_app().build_demo()
    assert next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "gen-otsu").value is True


def test_browsing_uses_the_otsu_box_the_datasets_peak_cut_and_the_row_buttons():
    from freeatm_hf.data.masks import likely_drawn
    from freeatm_hf.data.reading import generation_settings
    from freeatm_hf.masks import full_resolution_mask

    module = load_app()
    demo = module.build_demo()
    fns = {d.name: d for d in demo.fns.values()}
    row = module.RowCache(str(space_dir() / "example_dataset")).get(1)
    _, _, _, masks, summary, _ = fns["browse"].fn(1, 0.9, True)
    for (mask, _), o in zip(masks, row["objects"]):
        otsu = full_resolution_mask(np.asarray(o["attention"]), mask.size[::-1], "otsu").mask
        assert np.array_equal(np.asarray(mask) > 0, otsu)
    cut = generation_settings(str(space_dir() / "example_dataset"))["min_attention_peak"]
    assert [s["likely_drawn"] for s in summary] == [likely_drawn(o["attention_peak"], cut) for o in row["objects"]]
    # ◀ / ▶: a row back (never below 0) and a row on (up to the last, once the stream's end is known).
    by_elem = {getattr(c, "elem_id", None): c._id for c in demo.blocks.values()}
    button = {elem: next(d.fn for d in demo.fns.values() if any(t[0] == by_elem[elem] for t in d.targets))
              for elem in ("prev", "next")}
    assert [button["prev"](i) for i in (0, 1, 5)] == [0, 0, 4] and button["next"](0) == 1
    info = fns["browse"].fn(999, 0.4, False)[-1]  # past the end: the stream is read to its end
    last = int(info.split()[1])
    assert info.startswith(f"row {last} (the last) ")
    assert button["next"](last) == last and button["next"](last + 7) == last and button["prev"](last + 7) == last - 1
    # Back to a row already read: that row again, from the cache.
    *_, again, _, info = fns["browse"].fn(1, 0.9, True)
    assert [np.asarray(m).tolist() for m, _ in again] == [np.asarray(m).tolist() for m, _ in masks]
    assert info.startswith("row 1 · ")  # not "(the last)"


def test_live_generation_takes_the_limits_inclusively_and_gets_the_seed_and_steps(monkeypatch):
    import gradio as gr

    from freeatm_hf.data.masks import likely_drawn
    from freeatm_hf.generate import FreeATMGenerator
    from freeatm_hf.generate.pipelines import default_pipeline, pipeline_recommendation

    module = load_app()
    generate = next(d for d in module.build_demo(pipeline="no-such-pipeline").fns.values()
                    if d.name == "generate").fn
    for prompt, nouns in (("a cat " * 333 + "ab", "cat"), ("a cat", ",".join(["cat"] * 32))):  # at the limits
        with pytest.raises(gr.Error, match="could not load the pipeline"):
            generate(prompt, nouns, 0, 2, 0.4, False)
    with pytest.raises(gr.Error, match="2000 characters at most"):
        generate("a cat", "cat," * 667, 0, 2, 0.4, False)
    calls = []
    call = FreeATMGenerator.__call__
    monkeypatch.setattr(FreeATMGenerator, "__call__", lambda self, *a, **k: calls.append(k) or call(self, *a, **k))
    generate = next(d for d in module.build_demo().fns.values() if d.name == "generate").fn
    example, _ = module.prompt_language("default")
    output = generate(example, "", 5, 2, 0.4, False)
    assert [(c["seeds"], c["num_inference_steps"]) for c in calls] == [([5], 2)]
    cut = pipeline_recommendation(default_pipeline())["min_attention_peak"]
    summary, objects = output[4], output[-1][2]
    assert [s["attention_peak"] for s in summary] == [round(float(o["attention_peak"]), 4) for o in objects]
    assert [s["likely_drawn"] for s in summary] == [likely_drawn(o["attention_peak"], cut) for o in objects]
    # Listed nouns the shapes model never learned are drawn all the same, with a warning (a toast in the app);
    # its own object names, listed, are not warned about.
    with pytest.warns(UserWarning, match="not 'dog', 'lawn': its maps for them"):
        generate("a dog on a lawn", "dog, lawn", 0, 2, 0.4, False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        generate(example, "red circle, blue star", 0, 2, 0.4, False)
    assert not [w for w in seen if "shapes model knows" in str(w.message)]


def test_nouns_past_the_text_encoders_limit_are_named_not_dropped_in_silence(tmp_path):
    """The shapes model reads 32 tokens: a noun listed past them got no map, and the page just showed one fewer
    (the generator said so only in the server's log). A dataset row's cut-off nouns are named too."""
    from datasets import load_dataset

    module = load_app()
    generate = next(d for d in module.build_demo().fns.values() if d.name == "generate").fn
    prompt = " ".join(["a red circle and a blue star"] * 6) + " and a green square"
    with pytest.warns(UserWarning, match="no map for 'green square': it lies past the text encoder's token limit"):
        summary = generate(prompt, "red circle, green square", 0, 2, 0.4, False)[4]
    assert [s["name"] for s in summary] == ["red circle"]
    folder = tmp_path / "scenes"
    shutil.copytree(space_dir() / "example_dataset", folder, ignore=shutil.ignore_patterns("data"))
    ds = load_dataset(str(space_dir() / "example_dataset"), split="train")
    ds.map(lambda r: {"truncated_objects": ["green square"]}).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet"))
    browse = next(d for d in module.build_demo(str(folder)).fns.values() if d.name == "browse").fn
    assert browse(0, 0.4, False)[-1].endswith("· no map for 'green square': it lies past the text encoder's token "
                                             "limit, where the prompt is cut off (shorten the prompt)")


def test_a_capitalised_shapes_noun_is_not_warned_about():
    """The shapes model's tokenizer lowercases, so "A Red Circle" draws the red circle's maps; the Space warned that
    the model did not know 'Red Circle' and that its maps would not find it."""
    module = load_app()
    generate = next(d for d in module.build_demo().fns.values() if d.name == "generate").fn
    for nouns in ("", "Red Circle, Blue Star"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            summary = generate("A Red Circle and a Blue Star", nouns, 0, 2, 0.4, False)[4]
        assert [s["name"] for s in summary] == ["Red Circle", "Blue Star"]
        assert not [w for w in seen if "shapes model knows" in str(w.message)]
    with pytest.warns(UserWarning, match="not 'Dog': its maps"):
        generate("A Dog and a red circle", "Dog, red circle", 0, 2, 0.4, False)


def test_stage_space_lays_out_the_space_with_the_package_and_its_requirements(tmp_path, monkeypatch):
    from importlib.metadata import requires

    import freeatm_hf
    from freeatm_hf import spaces

    staged = spaces.stage_space(tmp_path / "space")
    files = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert "app.py" in files and "freeatm_hf/viz.py" in files and "example_dataset/README.md" in files
    assert not [f for f in files if "screenshots" in f or "__pycache__" in f or ".freeatm" in f.split("/")
                or f.startswith("freeatm_hf/_spaces")]
    assert (staged / "requirements.txt").read_text() == spaces.space_requirements()
    # Without the checkout's pyproject.toml: the installed metadata's requirements, without extras or gradio.
    monkeypatch.setattr(freeatm_hf, "__file__", str(tmp_path / "site-packages" / "freeatm_hf" / "__init__.py"))
    reqs = spaces.space_requirements().splitlines()[1:]
    assert reqs == [r for r in requires("freeatm_hf") if "extra ==" not in r and not r.startswith("gradio")]


def test_push_space_creates_the_space_with_the_visibility_and_token_given(tmp_path, monkeypatch):
    from freeatm_hf import __version__, spaces
    from tests.hub.fake_hub import FakeHub

    monkeypatch.setattr(spaces, "stage_space", lambda dest, name="mask_viewer": _small_space(dest))
    with FakeHub() as hub:
        import huggingface_hub.constants as c

        monkeypatch.setenv("HF_TOKEN", "hf_env")
        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        url = spaces.push_space("me/viewer", private=True, token="hf_given")
        repo = hub.repos[("space", "me/viewer")]
    assert repo["private"] is True and repo["files"] == {"app.py": b"print('hi')\n"}
    assert hub.auth_headers and set(hub.auth_headers) == {"Bearer hf_given"}
    assert hub.commits[-1]["message"] == f"Update Space with freeatm_hf {__version__}"
    assert url == f"{hub.url}/me/viewer/commit/{len(hub.commits):040d}"


def test_push_space_with_a_bare_name_uploads_to_the_space_the_hub_created(monkeypatch):
    """`freeatm push-space viewer` created me/viewer, then uploaded to `viewer`: a 404 after an empty Space."""
    from freeatm_hf import spaces
    from tests.hub.fake_hub import FakeHub

    monkeypatch.setattr(spaces, "stage_space", lambda dest, name="mask_viewer": _small_space(dest))
    with FakeHub() as hub:
        import huggingface_hub.constants as c

        monkeypatch.setenv("HF_TOKEN", "hf_env")
        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        url = spaces.push_space("viewer")
        repo = hub.repos[("space", "me/viewer")]
    assert repo["files"] == {"app.py": b"print('hi')\n"} and "/me/viewer/commit/" in url


def _small_space(dest):
    dest.mkdir(parents=True)
    (dest / "app.py").write_text("print('hi')\n")
    return dest


def test_a_dataset_threshold_above_the_sliders_usual_top_is_browsed_at(tmp_path):
    """Any threshold below 1 is a dataset's valid choice; Gradio refuses a slider value past the slider's maximum,
    which was 0.95 whatever the card said: the first browse of such a dataset failed."""
    from freeatm_hf.masks import full_resolution_mask

    folder = tmp_path / "scenes"
    shutil.copytree(space_dir() / "example_dataset", folder)
    card = folder / "README.md"
    card.write_text(card.read_text().replace("    threshold: 0.7\n", "    threshold: 0.97\n", 1))
    module = load_app()
    demo = module.build_demo(str(folder))
    slider = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "browse-threshold")
    assert slider.value == 0.97 and slider.preprocess(slider.value) == 0.97
    fns = {d.name: d for d in demo.fns.values()}
    row = module.RowCache(str(folder)).get(0)
    _, _, _, masks, _, _ = fns["browse"].fn(0, slider.preprocess(slider.value), False)
    for (mask, _), o in zip(masks, row["objects"]):
        expected = full_resolution_mask(np.asarray(o["attention"]), mask.size[::-1], 0.97).mask
        assert np.array_equal(np.asarray(mask) > 0, expected)


def test_a_dataset_the_hub_cannot_be_asked_for_is_one_line_and_exit_2(capsys):
    """Offline (as the tests run), a Hub id or a mistyped folder name cannot be looked up: `freeatm space` says so
    as the other commands do, not with the traceback of `datasets`' ConnectionError."""
    from freeatm_hf.cli import run

    with pytest.raises(SystemExit) as e:
        run(["space", "--dataset", "someone/no-such-scenes"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "freeatm space: error: 'someone/no-such-scenes' is no folder here, and the Hub could not be asked" in err


def test_push_space_to_a_hub_it_cannot_reach_is_one_line_and_exit_1(monkeypatch, capsys):
    """As `freeatm push` says it: the endpoint, the cause and the command that pushes again, not httpx's traceback."""
    import huggingface_hub.constants as c

    from freeatm_hf.cli import run

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as e:
        run(["push-space", "me/viewer", "--private"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "freeatm push-space: error: could not reach the Hub" in err
    assert "push again with `freeatm push-space me/viewer --private` when" in err


@pytest.mark.parametrize("mode", ["I;16", "F", "1"])
@pytest.mark.parametrize("threshold", [0.4, 0.7, "otsu"])
def test_the_viewers_masks_of_maps_of_another_depth_are_the_masks_training_reads(mode, threshold):
    """A 16-bit (or float, or 1-bit) map is min-max scaled and then resized when training reads it; the viewer scaled
    it after the resize, where bilinear resizing had lowered the peaks, so its masks were larger (a 16×16 16-bit map
    at 64×64 and 0.4: 1267 pixels in the viewer, 1127 in training)."""
    from freeatm_hf.data.masks import row_masks

    rng = np.random.default_rng(0)
    a = rng.random((16, 12)) ** 3
    att = {"I;16": Image.fromarray((a * 65535).astype(np.uint16)), "F": Image.fromarray(a.astype(np.float32)),
           "1": Image.fromarray(a > 0.3)}[mode]
    assert att.mode == mode
    size = (64, 48)
    _, _, _, masks, _ = load_app().render(Image.new("RGB", size[::-1]), "an x", [{"name": "x", "attention": att}],
                                          threshold)
    trained = row_masks({"objects": [{"attention": att}]}, size, threshold)
    assert len(trained) == 1 and not (trained[0] == 1).all()  # the object's own mask, not the whole-image one
    assert np.array_equal(np.asarray(masks[0][0]) > 0, trained[0].numpy() > 0)


@pytest.mark.parametrize("threshold", [0.2, 0.4, 0.6, 0.8, 0.7, "otsu"])
def test_the_viewers_masks_are_the_masks_training_reads(threshold):
    """At a threshold that is a whole 8-bit code (0.4 is 102/255), the pixels stored at that code are not above it
    (the card's `resize(attention) / 255 > threshold`), as training's masks have it; the viewer and the card's
    overlays showed them as mask."""
    import torch

    from freeatm_hf.data.masks import row_masks

    module = load_app()
    row = module.RowCache(str(space_dir() / "example_dataset")).get(2)
    size = (row["image"].height, row["image"].width)
    _, _, _, masks, _ = module.render(row["image"], row["prompt"], row["objects"], threshold)
    for (mask, _), o in zip(masks, row["objects"]):
        trained = row_masks({"objects": [o]}, size, threshold)
        assert len(trained) == 1 and not torch.equal(trained[0], torch.ones(size))  # the object's own mask
        assert np.array_equal(np.asarray(mask) > 0, trained[0].numpy() > 0)
