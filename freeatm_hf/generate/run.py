"""The generation job: prompts → pipeline with capture → Parquet shards → dataset card.

    freeatm generate --output_dir outputs/scenes --num_images 64
    accelerate launch -m freeatm_hf.generate --output_dir outputs/scenes --pipeline <id> --num_images 100000

Each process takes every `world_size`-th shard; re-running the same command resumes.
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..files import write_text_atomic
from ..prompts import LabelSpace, Prompt, ScenePrompts, as_prompt, load_augmenter
from .config import GenerateConfig
from .generator import FreeATMGenerator
from .pipelines import load_pipeline, local_fingerprint, pipeline_source, resolved_commit
from .schema import OBJECTS, TRUNCATED, dataset_features, encode_images, output_to_rows
from .writer import DatasetWriter, SettingsMismatchError, deal, exclusive_folder

logger = logging.getLogger(__name__)


class PromptSource:
    """Prompt `i` of the run, deterministic in `(config, i)`."""

    def __init__(self, cfg: GenerateConfig):
        self.augmenter = load_augmenter(cfg.augmenter)
        if cfg.prompt_mode == "file":
            self.items = _read_prompts_file(cfg.prompts_file)
            self.label_names = None
            if cfg._recommendation.get("prompt_mode") == "shapes":
                _warn_unknown_shapes(self.items, cfg)
        elif cfg.prompt_mode == "shapes":
            from ..toy.world import ShapesPrompts, ShapesWorld

            self.items = ShapesPrompts(ShapesWorld(seed=cfg.seed))
            self.label_names = ShapesPrompts.label_names
        else:
            space = LabelSpace.imagenet()
            # Photo prompts name one object; num_objects is a scene-prompt setting (unset otherwise).
            self.items = ScenePrompts(space, mode=cfg.prompt_mode, num_objects=1 if cfg.num_objects is None else cfg.num_objects,
                                      seed=cfg.seed)
            self.label_names = space.names

    def __getitem__(self, i: int) -> Prompt:
        return self.batch([i])[0]

    def batch(self, ids) -> list[Prompt]:
        """Prompts `ids`, an augmenter's rewrites asked for together (a server answers them concurrently)."""
        # A prompts file is cycled; the generated modes draw a fresh prompt for every index.
        prompts = [self.items[i % len(self.items)] if isinstance(self.items, list) else self.items[i] for i in ids]
        return self.augmenter.many(prompts) if self.augmenter else prompts


def _warn_unknown_shapes(prompts: list[Prompt], cfg: GenerateConfig):
    """A model trained on shapes captions has never seen other words: their maps look like masks all the same."""
    from ..toy.world import unknown_objects

    unknown = sorted(set(unknown_objects(o.name for p in prompts for o in p.objects)))
    if unknown:
        logger.warning("pipeline %r was trained on shapes captions, whose objects are a colour and a shape "
                       "(\"red circle\"); %s names %d it has never seen (%s): their maps will not find them",
                       cfg.pipeline, cfg.prompts_file, len(unknown), ", ".join(map(repr, unknown[:8]))
                       + (", ..." if len(unknown) > 8 else ""))


def _read_prompts_file(path: str) -> list[Prompt]:
    # UTF-8 whatever the locale, a BOM (Notepad's) dropped; lines end at a newline only (read_text turns \r\n and \r
    # into one): `splitlines` also cuts at U+2028 and U+0085, which JSON strings may hold raw.
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no prompts")
    if not path.lower().endswith((".jsonl", ".json")):
        return [Prompt(line.strip()) for _, line in lines]
    prompts = []
    for n, line in lines:
        try:
            prompts.append(as_prompt(json.loads(line)))
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{n}: {e} (one JSON object per line: "
                             '{"text": "a dog with a ball", "nouns": ["dog", "ball"]})') from None
    return prompts


BARRIER_TIMEOUT = timedelta(hours=24)


def run_device(requested: str | None, process_device: torch.device) -> torch.device:
    """`--device cuda` means this process's GPU: each rank of `accelerate launch` has its own, and
    `enable_model_cpu_offload` reads a bare "cuda" as GPU 0, which would put every rank's model there."""
    if not requested:
        return process_device
    device = torch.device(requested)
    return process_device if device.index is None and device.type == process_device.type else device


def generate_dataset(cfg: GenerateConfig) -> Path:
    from accelerate import PartialState

    # The barrier after generation waits for the slowest rank's last shard (ranks with none left wait for whole
    # shards): far past the 10-minute NCCL default on a large model (the job would be killed, resumed, killed).
    state = PartialState(cpu=cfg.device == "cpu", timeout=BARRIER_TIMEOUT)
    with exclusive_folder(cfg.output_dir) if state.is_main_process else nullcontext():
        return _generate(cfg, state)


def _generate(cfg: GenerateConfig, state) -> Path:
    device = run_device(cfg.device, state.device)
    source = PromptSource(cfg)
    features = dataset_features(source.label_names)
    # What made the rows so far, read before any process records this run's pipeline (after the barrier).
    made_by = _read_generator(cfg.output_dir)
    # Rows made from a branch that has moved on since resume with `--revision <their commit>`, as the refusal in
    # `_check_same_generator` advises: that revision is the one recorded, pinned.
    pinned = cfg.revision is not None and cfg.revision == made_by.get("pipeline_commit")
    writer = DatasetWriter(cfg.output_dir, features, cfg.settings(), cfg.num_images, cfg.rows_per_shard,
                           is_main_process=state.is_main_process, not_compared={"revision"} if pinned else ())
    made_by = made_by if writer.has_shards() else {}
    if state.is_main_process:
        writer.clean_tmp()
        if cfg.push_to_hub:  # before the generation the push follows
            from ..hub.push import check_private_possible

            check_private_possible(cfg.push_to_hub, "dataset", cfg.private)
    state.wait_for_everyone()

    pending = writer.pending()
    todo = deal(pending, state.process_index, state.num_processes)
    # Every rank deals the same list of pending shards: none may have written one before the others have read it.
    state.wait_for_everyone()
    dealt = ", ".join(f"rank {r}: {len(deal(pending, r, state.num_processes))}" for r in range(state.num_processes))
    logger.info("shards to write: %s (%d of %d in total done)", dealt if state.num_processes > 1 else len(todo),
                writer.num_shards - len(pending), writer.num_shards)
    if todo:
        # A retrained local folder is refused before minutes of loading it; a Hub id's commit is known once loaded.
        fingerprint = local_fingerprint(cfg.pipeline)
        _check_same_generator(made_by, None, None, fingerprint)
        pipe = load_pipeline(cfg.pipeline, device, cfg.torch_dtype, cfg.cpu_offload, revision=cfg.revision)
        if cfg.compile:  # the denoiser: a UNet, or the MM-DiT transformer of SD3 / Flux
            # One graph per token width (multiples of 8), batch size (a last, smaller batch), CFG on or off and
            # in or out of the step window: past dynamo's default of 8 the rest would silently run eager.
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, 32)
            if getattr(pipe, "unet", None) is not None:
                pipe.unet = torch.compile(pipe.unet)
            else:
                pipe.transformer = torch.compile(pipe.transformer)
        gen = FreeATMGenerator(pipe, cfg.capture_config(), threshold=cfg.threshold_value, refine=cfg.refine,
                               guidance_scale=cfg.guidance_scale)
        commit = resolved_commit(cfg.pipeline, cfg.revision)
        _check_same_generator(made_by, pipe, commit)
        _record_generator(writer, pipe, gen, state.process_index, commit=commit, fingerprint=fingerprint)
        rows_todo = sum(s.stop - s.start for s in todo)
        bar = tqdm(total=rows_todo, desc=f"generate [rank {state.process_index}]", unit="img",
                   disable=not state.is_local_main_process and state.num_processes > 1)
        # Each batch is PNG-encoded by a pool of threads while the next is generated (zlib lets go of the GIL;
        # one thread encodes 2-7 images/s, slower than a GPU makes them), so a shard in the making holds
        # compressed bytes; its Parquet writing overlaps the generation of the next shard (one shard in flight
        # at most, so memory stays bounded); the rename into data/ still happens only when complete.
        # The next batch's prompts are made (an augmenter's rewrites asked for) while this one generates.
        with (ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(encode_threads()) as encoders,
              ThreadPoolExecutor(max_workers=1) as prompter):
            pending = None
            for shard in todo:
                batches = []
                id_batches = [range(start, min(start + cfg.batch_size, shard.stop))
                              for start in range(shard.start, shard.stop, cfg.batch_size)]
                next_prompts = prompter.submit(source.batch, id_batches[0])
                for k, ids in enumerate(id_batches):
                    if pending is not None and pending.done():
                        pending.result()  # a failed write (a full disk) ends the run now, not a shard later
                    prompts = next_prompts.result()
                    if k + 1 < len(id_batches):
                        next_prompts = prompter.submit(source.batch, id_batches[k + 1])
                    out = gen(prompts, seeds=[cfg.seed + i for i in ids],
                              num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                              height=cfg.height, width=cfg.width)
                    batches.append(encoders.submit(encode_images, output_to_rows(out)))
                    bar.update(len(ids))
                if pending is not None:
                    pending.result()
                pending = pool.submit(_write_shard, writer, shard, batches)
            if pending is not None:
                pending.result()
        bar.close()
    state.wait_for_everyone()
    # Every shard is written. The card and the push (hours for a large dataset) are the main process's alone; the
    # others are done and do not wait for them at a barrier, which would time out.
    if state.is_main_process:
        write_card(writer, cfg, features)
        if cfg.push_to_hub:
            from ..hub.push import push_folder

            push_folder(cfg.output_dir, cfg.push_to_hub, repo_type="dataset", private=cfg.private or None)
    return Path(cfg.output_dir)


def encode_threads() -> int:
    """PNG encoders per process: the CPUs this process may use, shared among the node's processes (up to 8)."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))


def _write_shard(writer: DatasetWriter, shard, batches):
    writer.write(shard, [row for batch in batches for row in batch.result()])


def _generator_file(root: str | Path) -> Path:
    from .writer import STATE_DIR

    return Path(root) / STATE_DIR / "generator.json"


def _record_generator(writer: DatasetWriter, pipe, gen, rank: int, commit: str | None = None,
                      fingerprint: str | None = None):
    """Which pipeline class (and so which attention), scheduler and Hub commit made the rows, and the resolutions
    captured, kept for the card: a resumed run with nothing left to generate never loads the pipeline. The
    settings hold the resolutions asked for; an MM-DiT pipeline captures its one patch grid (factor 2) instead of
    the UNet default."""
    import json
    import os

    info = {"pipeline_class": type(pipe).__name__, "denoiser": "unet" if gen.kind == "unet" else "mmdit",
            "scheduler_class": type(pipe.scheduler).__name__, "down_factors": list(gen.capture.down_factors),
            **({"pipeline_commit": commit} if commit else {}),
            **({"pipeline_fingerprint": fingerprint} if fingerprint else {})}
    path = _generator_file(writer.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{rank}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def _check_same_generator(made_by: dict, pipe, commit: str | None, fingerprint: str | None = None):
    """A resumed run must use the weights that made the rows so far: a Hub id without --revision resolves to
    whatever its branch holds now, a local folder may have been retrained (or the package upgraded with a new
    shapes model) in between. What is not known yet (the pipeline before loading, its commit) is None."""
    old_commit, old_class = made_by.get("pipeline_commit"), made_by.get("pipeline_class")
    if old_commit and commit and old_commit != commit:
        raise SettingsMismatchError(f"the rows so far were made by pipeline commit {old_commit}; it now resolves to "
                                    f"{commit}. Resume with --revision {old_commit}, or use another output directory.")
    old_fingerprint = made_by.get("pipeline_fingerprint")
    if old_fingerprint and fingerprint and old_fingerprint != fingerprint:
        raise SettingsMismatchError("the rows so far were made by other weights or component settings of this "
                                    f"pipeline folder (fingerprint {old_fingerprint}, now {fingerprint}); restore "
                                    "them, or use another output directory.")
    if pipe is not None and old_class and old_class != type(pipe).__name__:
        raise SettingsMismatchError(f"the rows so far were made by a {old_class}, this run loaded a "
                                    f"{type(pipe).__name__}; use another output directory.")


def _read_generator(root: str | Path) -> dict:
    import json

    path = _generator_file(root)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_card(writer: DatasetWriter, cfg: GenerateConfig, features):
    """Dataset card from the finished shards: counts are read back from the Parquet files."""
    import pyarrow.parquet as pq

    from ..hub.cards import public_generation, render_dataset_card

    if not writer.is_complete():
        raise RuntimeError(f"{writer.root} is missing shards; re-run the same command to finish it")
    import pyarrow.compute as pc

    num_objects = num_empty = num_truncated = num_bytes = download_size = 0
    first_map = None  # the stored map of the first object of any row: its size is the card's map size
    for i in range(writer.num_shards):
        # The boxes alone, counted in Arrow: the objects whole would decode every map's bytes into Python.
        shard = pq.ParquetFile(writer.shard_path(i))
        num_bytes += sum(shard.metadata.row_group(g).total_byte_size for g in range(shard.metadata.num_row_groups))
        download_size += writer.shard_path(i).stat().st_size
        table = shard.read(columns=[f"{OBJECTS}.list.element.bbox", TRUNCATED])
        boxes = pc.struct_field(pc.list_flatten(table.column(OBJECTS)), "bbox")
        num_objects += len(boxes)
        num_empty += boxes.null_count
        num_truncated += pc.sum(pc.list_value_length(table.column(TRUNCATED))).as_py() or 0
        for group in range(shard.num_row_groups if first_map is None and len(boxes) else 0):
            maps = shard.read_row_group(group, columns=[f"{OBJECTS}.list.element.attention"]).column(OBJECTS)
            objs = next((o for o in maps.to_pylist() if o), None)
            if objs:
                first_map = objs[0]["attention"]
                break
    (height, width), map_hw = _sizes(writer.shard_path(0), first_map)
    examples = write_examples(writer.shard_path(0), Path(writer.root) / "examples", threshold=cfg.threshold_value)
    # The fingerprint of a local folder is resume state, as its path is: nothing a reader of the card can check.
    generator = {k: v for k, v in _read_generator(writer.root).items() if k != "pipeline_fingerprint"}
    settings = cfg.settings()
    if "down_factors" in generator:  # what was captured (an MM-DiT's one patch grid), not what was asked for
        settings["capture"] = {**settings["capture"], "down_factors": generator["down_factors"]}
    generation = public_generation({**settings, "pipeline": cfg.pipeline,
                                    "pipeline_source": pipeline_source(cfg.pipeline), **generator,
                                    "height": height, "width": width, "license": cfg.license})
    card = render_dataset_card(
        features, generation,
        counts=dict(num_rows=writer.num_rows, num_objects=num_objects, num_empty=num_empty,
                    num_truncated=num_truncated, num_shards=writer.num_shards),
        num_bytes=num_bytes, download_size=download_size,
        # Always the placeholder: push fills in the repo the folder goes to (`named_card`), which may be
        # another than --push_to_hub named (`freeatm push DIR other/repo`).
        repo_id="<user>/<dataset>",
        height=height, width=width, map_height=map_hw[0], map_width=map_hw[1], threshold=cfg.threshold,
        examples=examples,
        mmdit=generator.get("denoiser") == "mmdit",
    )
    # Whole or not at all: re-running a finished folder rewrites its card, and a card cut short by a crash reads as
    # one without the `freeatm` block (training would silently take the default threshold and no peak cut).
    write_text_atomic(Path(writer.root) / "README.md", str(card))


def write_examples(shard: Path, folder: Path, n: int = 4, threshold=0.4, min_side: int = 256) -> list[dict]:
    """Mask overlays of the first rows as PNGs in the repo (shown by the card)."""
    from io import BytesIO

    import pyarrow.parquet as pq
    from PIL import Image

    from ..viz import overlay

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for i, row in enumerate(pq.read_table(shard, columns=["image", "prompt", OBJECTS]).slice(0, n).to_pylist()):
        image = Image.open(BytesIO(row["image"]["bytes"]))
        objects = [{"name": o["name"], "attention": Image.open(BytesIO(o["attention"]["bytes"]))} for o in row[OBJECTS]]
        scale = max(1, -(-min_side // min(image.size)))
        path = folder / f"example_{i}.png"
        overlay(image, objects, threshold=threshold, scale=scale).save(path)
        examples.append({"path": f"{folder.name}/{path.name}", "prompt": row["prompt"]})
    return examples


def _sizes(shard: Path, attention: dict | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(height, width) of the shard's first image and of a stored `attention` map (the image's when there is none:
    no row has an object)."""
    from io import BytesIO

    import pyarrow.parquet as pq
    from PIL import Image

    row = pq.read_table(shard, columns=["image"]).slice(0, 1).to_pylist()[0]
    w, h = Image.open(BytesIO(row["image"]["bytes"])).size
    if attention is None:
        return (h, w), (h, w)
    mw, mh = Image.open(BytesIO(attention["bytes"])).size
    return (h, w), (mh, mw)
