"""Free attention masks, looked at: browse a freeatm dataset, or generate with masks live.

    python app.py                                   # the example dataset next to this file + the default pipeline
    python app.py --dataset user/scenes --pipeline path/to/pipeline
    freeatm space --dataset outputs/scenes          # the same, from the installed package

Environment variables FREEATM_DATASET and FREEATM_PIPELINE set the same as the flags (for a Hub Space).
"""

import argparse
import os
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from freeatm_hf.data.masks import likely_drawn
from freeatm_hf.data.reading import dataset_threshold, generation_settings
from freeatm_hf.masks import DEFAULT_THRESHOLD, full_resolution_mask
from freeatm_hf.prompts import LabelSpace, Prompt, free_spans
from freeatm_hf.toy.world import unknown_objects
from freeatm_hf.viz import color, heatmap, overlay

HERE = Path(__file__).resolve().parent
EXAMPLE_DATASET = HERE / "example_dataset"
VIEW_SIDE = 384  # small generated images are enlarged (nearest) to at least this side for display
MAX_VIEW_SIDE = 2048
# Per-object maps and masks, four to a row (two objects do not fill it with page-wide maps), each named by its
# caption. A fixed gallery height clipped the square thumbnails of a wide page, and with them the captions: a
# visitor saw four unnamed maps.
GALLERY = dict(columns=4, fit_columns=False, height="auto", format="png", object_fit="contain", elem_classes=["maps"])
# On a phone's width: Gradio's gallery gives a column at least 100 px, so four overflowed (the fourth map cut off),
# and the Otsu box, given no width of its own beside a slider, wrapped its label into a 55-px column cut off at the
# right: maps two to a row there, and the box 160 px of its own. Passed to launch(), where Gradio 6 takes CSS.
CSS = """@media (max-width: 640px) {
  .maps .grid-container { --grid-cols: 2 !important; }
  .otsu { min-width: 160px !important; }
}"""
# What a visitor may ask the live generator to track: past the text encoder's window nothing is tracked anyway,
# and matching nouns to the prompt grows fast with their number.
MAX_PROMPT_CHARS = 2000
MAX_NOUNS = 32


class RowCache:
    """Rows of a (possibly huge, possibly remote) dataset, streamed in order and kept once read.

    A public Space takes row numbers from anyone: rows are kept as their encoded files (a tenth of a decoded 512²
    row with its maps) and decoded when shown, a request reads at most `READ_AHEAD` rows past those already read,
    and no more than `MAX_ROWS` are kept."""

    READ_AHEAD = 1000
    MAX_ROWS = 10_000

    def __init__(self, source: str):
        from freeatm_hf.data.reading import holds_attention_maps, load

        self.source = source
        # The project's loader: a Hub id that cannot be reached (offline, mistyped) is one sentence, not the
        # traceback `datasets` raises for it.
        ds = load(source, split="train", streaming=True)
        self.features = ds.features
        if ds.features is not None:  # a stream that states its features (Parquet does) is checked now, not per click
            cols = list(ds.features)
            if not {"image", "prompt", "objects"} <= set(cols) or not holds_attention_maps(ds.features["objects"]):
                raise ValueError(f"{source} is not a freeatm dataset (columns {cols}): the viewer shows images with "
                                 "their objects' attention maps, written by `freeatm generate`")
            ds = ds.decode(False)
        self._iter = iter(ds)
        self.rows: list[dict] = []
        self.exhausted = False
        # Gradio runs events of several visitors at once (and the row box's, slider's and buttons' of one): the
        # stream is one iterator, read by one of them at a time.
        self._lock = threading.Lock()

    def get(self, index: int | None) -> dict:
        if index is None:
            raise gr.Error("type a row number")
        if not self.exhausted and index >= len(self.rows) + self.READ_AHEAD:
            raise gr.Error(f"row {index} is more than {self.READ_AHEAD} rows past the {len(self.rows)} read so far: "
                           f"go there in steps of fewer than {self.READ_AHEAD}")
        if not self.exhausted and index >= self.MAX_ROWS:
            raise gr.Error(f"the viewer keeps the first {self.MAX_ROWS} rows of {self.source}: pick one of those")
        with self._lock:
            while len(self.rows) <= index and not self.exhausted:
                try:
                    self.rows.append(next(self._iter))
                except StopIteration:
                    self.exhausted = True
        if not self.rows:
            raise gr.Error(f"dataset {self.source} has no rows")
        row = self.rows[min(index, len(self.rows) - 1)]
        return row if self.features is None else self.features.decode_example(row)

    def clamp(self, index: int) -> int:
        """`index` within the rows, as far as they are known: the last one once the stream has ended."""
        return max(0, min(index, len(self.rows) - 1) if self.exhausted else index)


def _scale(image: Image.Image) -> int:
    """Enlarged until the short side is `VIEW_SIDE`, the long one kept under `MAX_VIEW_SIDE` (a 3000×1 image
    would otherwise be drawn 1,152,000 pixels long, with every map and mask)."""
    return max(1, min(-(-VIEW_SIDE // min(image.size)), MAX_VIEW_SIDE // max(image.size)))


def _caption(o: dict, min_peak: float | None) -> str:
    """The object's name, flagged when its attention peak says the generator likely did not draw it."""
    return o["name"] if likely_drawn(o.get("attention_peak"), min_peak) else f"{o['name']} (likely not drawn)"


def _cut_off(names: list[str]) -> str:
    """What a visitor is told of nouns the text encoder never read (they lie past its token limit)."""
    which = "it lies" if len(names) == 1 else "they lie"
    return (f"no map for {', '.join(map(repr, names))}: {which} past the text encoder's token limit, where the prompt "
            "is cut off (shorten the prompt)")


def render(image: Image.Image, prompt: str, objects: list[dict], threshold: float, min_peak: float | None = None):
    """Overlay, highlighted prompt, per-object soft maps, per-object masks and a summary of boxes. With
    `min_peak` (the cut the dataset or model recommends), objects whose `attention_peak` is below it are flagged."""
    scale = _scale(image)
    size = (image.height, image.width)
    view = overlay(image, objects, threshold=threshold, scale=scale)
    captions = [_caption(o, min_peak) for o in objects]
    soft = [(heatmap(np.asarray(o["attention"]), (image.height * scale, image.width * scale)), c)
            for o, c in zip(objects, captions)]
    masks, summary = [], []
    for o, c in zip(objects, captions):
        r = full_resolution_mask(np.asarray(o["attention"]), size, threshold)
        masks.append((Image.fromarray((r.mask * 255).astype(np.uint8)), c))
        entry = {"name": o["name"], "bbox": [round(v, 1) for v in r.bbox] if r.bbox else None,
                 "area": round(r.area, 4), "empty": r.empty}
        if o.get("attention_peak") is not None:
            entry["attention_peak"] = round(float(o["attention_peak"]), 4)
            if min_peak:
                entry["likely_drawn"] = likely_drawn(o["attention_peak"], min_peak)
        summary.append(entry)
    names = [o["name"] for o in objects]
    labels = object_labels(names)
    # The prompt's nouns in the same colours as their masks.
    text = gr.HighlightedText(value=highlight(prompt, names),
                              color_map={n: "#{:02x}{:02x}{:02x}".format(*color(i)) for i, n in enumerate(labels)})
    return view, text, soft, masks, summary


def slider_max(start: float) -> float:
    """The threshold slider's top: 0.95, or the starting threshold when a dataset's card or a model states a higher
    one (any below 1 is valid). Gradio refuses a slider's value past its maximum, so the page's first browse failed
    with "Value 0.97 is greater than maximum value 0.95" and no row was ever shown."""
    return max(0.95, start)


def object_labels(names: list[str]) -> list[str]:
    """One label per object, a repeated noun numbered ("dog #1", "dog #2"), so each keeps its own colour."""
    return [f"{n} #{names[: i + 1].count(n)}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def highlight(prompt: str, nouns: list[str]) -> list[tuple[str, str | None]]:
    """The prompt split into (text, label) pieces, each tracked noun at the span the generator tracks
    (`Prompt.from_nouns`: longer nouns first, a repeated noun at its next occurrence), labelled as
    `object_labels` does."""
    labels = object_labels(nouns)
    try:
        spans = [(o.start, o.end, label) for o, label in zip(Prompt.from_nouns(prompt, nouns).objects, labels)]
    except ValueError:  # a noun the text does not hold (a hand-made row): the ones it does, first match each
        spans = []
        for noun, label in zip(nouns, labels):
            free = free_spans(noun, prompt, [(s, e) for s, e, _ in spans])
            if free:
                spans.append((*free[0], label))
    pieces, pos = [], 0
    for s, e, label in sorted(spans):
        if s > pos:
            pieces.append((prompt[pos:s], None))
        pieces.append((prompt[s:e], label))
        pos = e
    if pos < len(prompt):
        pieces.append((prompt[pos:], None))
    return pieces


def detect_nouns(prompt: str, vocabulary: list[str]) -> list[str]:
    """Known object names in the prompt, longest first, without overlaps, in prompt order."""
    found = []
    for name in sorted(set(vocabulary), key=len, reverse=True):
        # A name's own occurrences never overlap one another: checked against the longer names' alone.
        found += [(s, e, prompt[s:e]) for s, e in free_spans(name, prompt, [(s, e) for s, e, _ in found])]
    return [n for _, _, n in sorted(found)]


def _recommendation(pipeline: str) -> dict:
    from freeatm_hf.generate.pipelines import default_pipeline, pipeline_recommendation

    return pipeline_recommendation(default_pipeline() if pipeline == "default" else pipeline) or {}


def prompt_language(pipeline: str) -> tuple[str, list[str]]:
    """(example prompt, known object names) for the prompts this pipeline understands: shapes-world captions
    for a model whose freeatm.json says so (the embedded shapes model), ImageNet scenes otherwise."""
    if _recommendation(pipeline).get("prompt_mode") == "shapes":
        from freeatm_hf.toy.world import OBJECT_NAMES

        return "a red circle and a small blue star on a striped background", list(OBJECT_NAMES)
    return ("a golden retriever with a tennis ball is playing in a park",
            LabelSpace.imagenet().vocabulary)


def build_demo(dataset: str | None = None, pipeline: str | None = None) -> gr.Blocks:
    dataset = dataset or os.environ.get("FREEATM_DATASET") or str(EXAMPLE_DATASET)
    pipeline = pipeline or os.environ.get("FREEATM_PIPELINE") or "default"
    cache = RowCache(dataset)
    example_prompt, vocabulary = prompt_language(pipeline)
    rec = _recommendation(pipeline)
    # The shapes model knows its object names only; a real model's vocabulary is open (ImageNet names are examples).
    closed = rec.get("prompt_mode") == "shapes"
    # Where each tab's threshold starts: the one the pipeline's mask evaluation chose for live generation, and
    # the one the dataset's card states (its boxes') for browsing, else the same. "otsu" (a threshold per map)
    # is a box to tick next to the slider.
    gen_choice = rec.get("threshold") or DEFAULT_THRESHOLD
    browse_choice = dataset_threshold(dataset, default=gen_choice)
    threshold0, gen_otsu0 = (DEFAULT_THRESHOLD, True) if gen_choice == "otsu" else (float(gen_choice), False)
    browse_threshold0, browse_otsu0 = ((threshold0, True) if browse_choice == "otsu"
                                       else (float(browse_choice), False))
    # The attention peak below which an object was likely not drawn, as the dataset's card / the model recommends.
    browse_min_peak = generation_settings(dataset).get("min_attention_peak")
    gen_min_peak = rec.get("min_attention_peak")
    state: dict = {}  # the pipeline, loaded once and shared; each session's last generation is in a gr.State

    def generator():
        if "gen" not in state:
            import torch

            from freeatm_hf.generate import FreeATMGenerator
            from freeatm_hf.generate.pipelines import load_pipeline

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            try:
                state["gen"] = FreeATMGenerator(load_pipeline(pipeline, device))
            except Exception as e:  # noqa: BLE001 - shown to the user, not a bare "Error"
                raise gr.Error(f"could not load the pipeline {pipeline!r}: {type(e).__name__}: {e}") from e
        return state["gen"], vocabulary

    def browse(index: float, threshold: float, otsu: bool = browse_otsu0):
        try:
            row = cache.get(None if index is None else int(index))
            objects = [{"name": o["name"], "attention": o["attention"], "attention_peak": o.get("attention_peak")}
                       for o in row["objects"]]
            view, text, soft, masks, summary = render(row["image"], row["prompt"], objects,
                                                      "otsu" if otsu else threshold, browse_min_peak)
        except gr.Error:  # the viewer's own message (a ValueError too), as it is
            raise
        except (OSError, ValueError) as e:
            # A damaged row (an image file cut short, a map that is no map): Gradio shows any error but its own as a
            # bare "Error", which told a visitor neither the row nor that the others can still be browsed.
            raise gr.Error(f"row {cache.clamp(int(index))} cannot be shown ({type(e).__name__}: {e}); the other rows "
                           "can") from e
        shown = min(int(index), len(cache.rows) - 1)
        last = " (the last)" if cache.exhausted and shown == len(cache.rows) - 1 else ""
        info = f"row {shown}{last} · seed {row.get('seed')} · {len(objects)} objects"
        if row.get("truncated_objects"):
            info += f" · {_cut_off(row['truncated_objects'])}"
        return view, text, soft, masks, summary, info

    def generate(prompt: str, nouns: str, seed: float, steps: float, threshold: float, otsu: bool = gen_otsu0):
        prompt, nouns = prompt or "", nouns or ""  # the API may send null for an empty box
        if not prompt.strip():
            raise gr.Error("type a prompt")
        if len(prompt) > MAX_PROMPT_CHARS or len(nouns) > MAX_PROMPT_CHARS:
            raise gr.Error(f"the prompt and the nouns are {MAX_PROMPT_CHARS} characters at most")
        if seed is None:
            raise gr.Error("type a seed")
        names = [n.strip() for n in nouns.split(",") if n.strip()]
        if len(names) > MAX_NOUNS:
            raise gr.Error(f"track {MAX_NOUNS} nouns at most, not {len(names)}")
        gen, vocab = generator()
        names = names or detect_nouns(prompt, vocab)
        if not names:
            raise gr.Error("no known object noun found in the prompt: list the nouns to track")
        unknown = unknown_objects(names) if closed else []
        if unknown:  # drawn all the same: the maps are shown, with the reason not to trust them
            gr.Warning(f"the shapes model knows a colour and a shape (\"{vocab[0]}\"), not "
                       f"{', '.join(map(repr, unknown))}: its maps for them will not find them")
        try:
            p = Prompt.from_nouns(prompt, names)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        out = gen([p], seeds=[int(seed)], num_inference_steps=int(steps))  # the model's recommended guidance
        if out.truncated[0]:  # else a listed noun was simply missing from the maps, said only in the server's log
            gr.Warning(_cut_off(out.truncated[0]))
        objects = [{"name": o.name, "attention": Image.fromarray(o.attention_uint8),
                    "attention_peak": o.attention_peak} for o in out.objects[0]]
        view, text, soft, masks, summary = render(out.images[0], prompt, objects, "otsu" if otsu else threshold,
                                                  gen_min_peak)
        return view, text, soft, masks, summary, (out.images[0], prompt, objects)

    def regenerate_view(threshold: float, otsu: bool, last):
        if last is None:  # nothing generated yet in this session
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        image, prompt, objects = last
        return render(image, prompt, objects, "otsu" if otsu else threshold, gen_min_peak)

    with gr.Blocks(title="freeatm mask viewer") as demo:
        gr.Markdown("# Free attention masks\nEach object noun of a prompt gets the map its cross-attention drew "
                    "while the image was generated. Coloured regions are the masks at the threshold; boxes "
                    "surround them.")
        with gr.Tab("Browse", id="browse"):
            gr.Markdown(f"Dataset: `{dataset}`")
            with gr.Row():
                index = gr.Number(value=0, precision=0, minimum=0, label="row", elem_id="row-index")
                prev_btn = gr.Button("◀ previous", elem_id="prev")
                next_btn = gr.Button("next ▶", elem_id="next")
            with gr.Row():
                b_threshold = gr.Slider(0.0, slider_max(browse_threshold0), value=browse_threshold0, step=0.05,
                                        label="threshold", elem_id="browse-threshold", scale=4)
                b_otsu = gr.Checkbox(value=browse_otsu0, label="Otsu (a threshold per map)", elem_id="browse-otsu",
                                     elem_classes=["otsu"])
            with gr.Row():
                b_view = gr.Image(label="masks", type="pil", elem_id="browse-overlay", format="png")
                with gr.Column():
                    b_info = gr.Markdown(elem_id="browse-info")
                    b_text = gr.HighlightedText(label="prompt", elem_id="browse-prompt")
                    b_summary = gr.JSON(label="objects")
            b_soft = gr.Gallery(label="soft maps", elem_id="browse-soft", **GALLERY)
            b_masks = gr.Gallery(label="masks", elem_id="browse-masks", **GALLERY)
            outputs = [b_view, b_text, b_soft, b_masks, b_summary, b_info]
            inputs = [index, b_threshold, b_otsu]
            index.change(browse, inputs, outputs, api_name="browse")
            b_threshold.change(browse, inputs, outputs, api_name=False)
            b_otsu.change(browse, inputs, outputs, api_name=False)
            prev_btn.click(lambda i: max(0, cache.clamp(int(i or 0)) - 1), index, index, api_name=False)
            next_btn.click(lambda i: cache.clamp(int(i or 0) + 1), index, index, api_name=False)
            demo.load(browse, inputs, outputs, api_name=False)
        with gr.Tab("Generate", id="generate"):
            gr.Markdown(f"Pipeline: `{pipeline}`")
            with gr.Row():
                prompt = gr.Textbox(label="prompt", value=example_prompt, elem_id="gen-prompt", scale=3,
                                    max_length=MAX_PROMPT_CHARS)
                nouns = gr.Textbox(label="nouns to track (comma-separated; empty = detect)", elem_id="gen-nouns",
                                   max_length=MAX_PROMPT_CHARS)
            with gr.Row():
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**63 - 1, label="seed")
                steps = gr.Slider(2, 50, value=20, step=1, label="steps")
                g_threshold = gr.Slider(0.0, slider_max(threshold0), value=threshold0, step=0.05, label="threshold",
                                        elem_id="gen-threshold")
                g_otsu = gr.Checkbox(value=gen_otsu0, label="Otsu (a threshold per map)", elem_id="gen-otsu",
                                    elem_classes=["otsu"])
            last = gr.State(None)
            go = gr.Button("Generate", variant="primary", elem_id="gen-button")
            with gr.Row():
                g_view = gr.Image(label="masks", type="pil", elem_id="gen-overlay", format="png")
                with gr.Column():
                    g_text = gr.HighlightedText(label="prompt", elem_id="gen-prompt-highlight")
                    g_summary = gr.JSON(label="objects")
            g_soft = gr.Gallery(label="soft maps", elem_id="gen-soft", **GALLERY)
            g_masks = gr.Gallery(label="masks", elem_id="gen-masks", **GALLERY)
            g_outputs = [g_view, g_text, g_soft, g_masks, g_summary]
            go.click(generate, [prompt, nouns, seed, steps, g_threshold, g_otsu], [*g_outputs, last],
                     api_name="generate")
            for control in (g_threshold, g_otsu):
                control.change(regenerate_view, [g_threshold, g_otsu, last], g_outputs, api_name=False)
    return demo


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1 to 65535, got {text!r}")
    return int(text)


def main(argv=None):
    p = argparse.ArgumentParser(prog="freeatm space", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None,
                   help="dataset folder or Hub id (default: $FREEATM_DATASET, else the bundled example)")
    p.add_argument("--pipeline", default=None,
                   help="diffusers pipeline id or folder for live generation (default: $FREEATM_PIPELINE, else the "
                        "shipped shapes model)")
    # Unset, Gradio's own defaults apply: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Hub Space sets 0.0.0.0), else
    # 127.0.0.1:7860.
    p.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME, else 127.0.0.1")
    p.add_argument("--port", type=port, default=None, help="default: $GRADIO_SERVER_PORT, else 7860")
    p.add_argument("--share", action="store_true", help="also serve it at a temporary public gradio.live link")
    args = p.parse_args(argv)
    from freeatm_hf.data.reading import looks_like_a_path

    # Loaded at the first Generate: a folder that is not there is said now, not to the first user.
    if args.pipeline and looks_like_a_path(args.pipeline) and not Path(args.pipeline).exists():
        p.error(f"--pipeline {args.pipeline}: no such folder")
    build_demo(args.dataset, args.pipeline).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                  css=CSS)


if __name__ == "__main__":
    main()
