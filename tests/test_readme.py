"""The README's Python snippets run as written: the shapes-model and dataset ones verbatim, the Stable Diffusion
one on a tiny SD pipeline saved as a folder (its model id, fp16 and CUDA replaced, nothing else)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def block(contains: str) -> str:
    (found,) = [b for b in python_blocks() if contains in b]
    return found


def test_the_stable_diffusion_snippet_runs_on_a_tiny_pipeline(tmp_path):
    from freeatm_hf.generate.tiny import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "sd")
    code = block("FreeATMGenerator(pipe)")
    # The only changes: the id of a model this machine cannot download, and the GPU and its dtype it lacks.
    for old, new in ((f'"{SD_ID}"', f'"{tmp_path / "sd"}"'), ("dtype=torch.float16", "dtype=torch.float32"),
                     ('.to("cuda")', '.to("cpu")')):
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    obj = scope["obj"]
    width, height = scope["out"].images[0].size
    assert obj.name == "golden retriever" and obj.mask.mask.shape == obj.soft_map.shape  # at the map's resolution
    x0, y0, x1, y1 = obj.mask.bbox  # in image pixels
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert len(scope["prompts"]) == 4 and all(p.objects for p in scope["prompts"])


def test_the_shapes_model_and_dataset_snippets_run_verbatim(tmp_path, monkeypatch):
    from freeatm_hf import cli

    first = block("FreeATMGenerator(pipe)")
    imports = "\n".join(line for line in first.splitlines() if line.startswith(("import ", "from ")))
    scope = {}
    exec(compile(imports + "\n" + block("toy.model import MODEL_DIR"), "README.md", "exec"), scope)
    assert [o.name for o in scope["out"].objects[0]] == ["red circle", "blue star"]
    # "its card's capture, threshold and guidance": the model folder's recommendation, with nothing passed.
    recommended, gen = json.loads((Path(scope["MODEL_DIR"]) / "freeatm.json").read_text()), scope["gen"]
    assert (gen.threshold, gen.guidance_scale, gen.refine) == (recommended["threshold"],
                                                              recommended["guidance_scale"], recommended["refine"])
    assert [list(gen.capture.down_factors), list(gen.capture.step_window)] == [
        recommended["capture"]["down_factors"], recommended["capture"]["step_window"]]
    # The dataset snippet reads what the README's set-up command writes (fewer, shorter images here).
    monkeypatch.chdir(tmp_path)
    cli.main(["generate", "--output_dir", "outputs/demo", "--num_images", "2", "--num_inference_steps", "2"])
    scope = {}
    exec(compile(block("load_dataset("), "README.md", "exec"), scope)
    row = scope["row"]
    assert row["objects"][0]["name"] in row["prompt"] and row["image"].size == row["objects"][0]["attention"].size


def test_the_python_training_snippet_runs_as_written(tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    from freeatm_hf.models import SimCLRModel

    monkeypatch.chdir(tmp_path)  # the shipped recipe and its example dataset, found from any directory
    scope = {}
    exec(compile(block("pretrain("), "README.md", "exec"), scope)
    assert isinstance(scope["model"], SimCLRModel) and scope["trainer"].state.global_step == 2
    assert ModelCard.load(tmp_path / "outputs" / "simclr-py" / "README.md").data.library_name == "freeatm_hf"


def readme_commands(program: str) -> list[list[str]]:
    """Every `freeatm PROGRAM ...` command the README gives, in its shell blocks and in its prose, as arguments
    (a comment, `<placeholder>`s as one word each; ones eliding arguments, `...`, left out)."""
    import shlex

    text = (ROOT / "README.md").read_text()
    shell = "\n".join(re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)).replace("\\\n", " ")
    lines = shell.splitlines() + re.findall(r"`(freeatm [^`]*)`", text)
    commands = []
    for line in lines:
        found = re.search(rf"(?:^|\s)freeatm {program}(?:\s(.*))?$", line.split("#")[0].strip())
        if found is None:
            continue
        words = shlex.split(re.sub(r"<[^>]*>", "placeholder", found.group(1) or ""))
        if not any(w in ("...", "…", "--help") or "|" in w for w in words):
            commands.append(words)
    return commands


def test_every_training_command_in_the_readme_parses_from_any_directory(tmp_path, monkeypatch):
    """`freeatm train contrastive_cpu_smoke.yaml` was said to run from anywhere; that recipe names no method (it
    serves SimCLR and MoCo), so the command as written was refused."""
    from freeatm_hf.train.cli import check_applicable, given_flags, parse, resolve_method

    monkeypatch.chdir(tmp_path)  # a recipe that is not here is the project's own
    commands = readme_commands("train")
    assert len(commands) >= 8 and ["simclr", "recipes/contrastive_cpu_smoke.yaml"] in commands
    for words in commands:
        method, flags = resolve_method(list(words))
        # The GPU recipes' bf16 is refused on this CPU; overrides after a recipe are the CLI contract.
        args, training_args = parse(method, flags + ["--bf16", "false"])
        check_applicable(method, args, training_args, given_flags(words))
