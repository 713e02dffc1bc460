"""How good are the free attention masks? Score them on generated shapes-world scenes.

Ground truth for a *generated* image comes from the colour segmenter (each scene's objects have distinct
colours), validated against exact masks on rendered scenes (its IoU there is the ceiling). The mask
threshold is chosen on a separate validation split. Reported: mIoU over objects that were drawn, the share
of named objects drawn, mIoU with undrawn objects counted as 0, per shape and per colour, a swap baseline
(object A's attention mask against object B's ground truth: near 0 unless the maps are mere foreground
detectors), right colour *and* shape, and scenes with an unrequested object. The maps are scored as captured and
guided-filtered on the image (`refine`); which is better is chosen on validation too. The same judge on rendered scenes
after a VAE round trip (`autoencoder_ceiling`) says how much of a shortfall is the decoder's. With `sweep`, each capture
setting (resolutions × step windows) is scored and the best one recommended.
"""

import json
import logging
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..masks import binarize, normalize, refine_maps, resize_map
from .judge import ShapeClassifier, colour_masks, judge_scene
from .world import ShapesWorld

logger = logging.getLogger(__name__)

THRESHOLDS = [round(0.2 + 0.05 * i, 2) for i in range(14)] + ["otsu"]  # 0.2 … 0.85, and Otsu


@dataclass
class ObjectRecord:
    scene: int
    name: str
    shape: str
    color: str
    drawn: bool
    shape_ok: bool
    norm_map: np.ndarray | None  # attention map at image size, [0, 1]; None when flat
    refined_map: np.ndarray | None  # the same map guided-filtered on the image (refine="guided"), [0, 1]
    gt: np.ndarray  # colour-segmenter mask
    peak: float | None = None  # the raw map's highest mean attention probability (`attention_peak`)


@dataclass
class SplitRecords:
    objects: list[ObjectRecord] = field(default_factory=list)
    extra_scenes: int = 0
    scenes: int = 0


def collect(generate, specs, seeds, batch_size: int, classifier: ShapeClassifier, desc: str = "scenes",
            **gen_kwargs) -> SplitRecords:
    """Generate each scene's caption and judge the picture and its maps (`desc`: what the progress bar says)."""
    from tqdm.auto import tqdm

    rec = SplitRecords()
    bar = tqdm(total=len(specs), desc=desc, unit="scene")
    for start in range(0, len(specs), batch_size):
        chunk = specs[start : start + batch_size]
        out = generate([s.prompt() for s in chunk], seeds=seeds[start : start + batch_size], **gen_kwargs)
        for j, (spec, image, objs) in enumerate(zip(chunk, out.images, out.objects)):
            img = np.asarray(image)
            judgements, extra = judge_scene(img, [(o.color, o.shape) for o in spec.objects], classifier)
            rec.scenes += 1
            rec.extra_scenes += bool(extra)
            by_name = {o.name: o for o in objs}
            found = [by_name[o.name] for o in spec.objects if o.name in by_name]
            refined = dict(zip([g.name for g in found], refine_maps(img, [g.soft_map for g in found])))
            for o, jd in zip(spec.objects, judgements):
                gobj = by_name.get(o.name)
                norm = ref = peak = None
                if gobj is not None:
                    peak = gobj.attention_peak
                    norm = normalize(resize_map(gobj.soft_map, img.shape[:2]))
                    ref = normalize(refined[o.name])
                rec.objects.append(ObjectRecord(start + j, o.name, o.shape, o.color, jd.drawn, jd.shape_ok, norm,
                                                ref, jd.mask, peak))
        bar.update(len(chunk))
    bar.close()
    return rec


def _iou(p: np.ndarray, r: np.ndarray) -> float:
    union = np.logical_or(p, r).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, r).sum() / union)


def _pred(o: ObjectRecord, threshold, refine: str = "none") -> np.ndarray:
    m = o.refined_map if refine == "guided" else o.norm_map
    return np.zeros_like(o.gt) if m is None else binarize(m, threshold)


def choose_threshold(val: SplitRecords, refine: str = "none"):
    drawn = [o for o in val.objects if o.drawn]
    scores = {t: np.mean([_iou(_pred(o, t, refine), o.gt) for o in drawn]) if drawn else 0.0 for t in THRESHOLDS}
    best = max(scores, key=scores.get)
    return best, {str(k): round(float(v), 4) for k, v in scores.items()}


def score(test: SplitRecords, threshold, refine: str = "none") -> dict:
    from ..eval.metrics import load_metric

    metric = load_metric("mask_miou")
    drawn = [o for o in test.objects if o.drawn]
    res = metric.compute(predictions=[_pred(o, threshold, refine).astype(np.uint8) for o in drawn],
                         references=[o.gt.astype(np.uint8) for o in drawn],
                         groups=[o.shape for o in drawn]) if drawn else {"mean_iou": 0.0, "per_group_iou": {}}
    ious = dict(zip([id(o) for o in drawn], res.get("per_object_iou", [])))
    by_color = {}
    for o in drawn:
        by_color.setdefault(o.color, []).append(ious[id(o)])
    swaps = []
    scenes: dict[int, list[ObjectRecord]] = {}
    for o in drawn:
        scenes.setdefault(o.scene, []).append(o)
    for objs in scenes.values():
        for a in objs:
            for b in objs:
                if a is not b:
                    swaps.append(_iou(_pred(a, threshold, refine), b.gt))
    n = len(test.objects)
    return {
        "threshold": threshold,
        "refine": refine,
        "objects": n,
        "scenes": test.scenes,
        "miou_drawn": round(res["mean_iou"], 4),
        "drawn_share": round(len(drawn) / max(n, 1), 4),
        "miou_undrawn_as_zero": round(res["mean_iou"] * len(drawn) / max(n, 1), 4),
        "right_colour_and_shape_share": round(sum(o.drawn and o.shape_ok for o in test.objects) / max(n, 1), 4),
        "scenes_with_extra_object_share": round(test.extra_scenes / max(test.scenes, 1), 4),
        "swap_baseline_miou": round(float(np.mean(swaps)), 4) if swaps else None,
        "per_shape_miou": {k: round(v, 4) for k, v in res.get("per_group_iou", {}).items()},
        "per_colour_miou": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_color.items())},
    }


def _auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half): the ROC AUC."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos, dtype=np.float64)[:, None], np.asarray(neg, dtype=np.float64)[None]
    return float((p > n).mean() + 0.5 * (p == n).mean())


KEEP_DRAWN = 0.95  # share of drawn objects the cut must keep: it may rarely cost a good instance


def choose_min_peak(val: SplitRecords, keep: float = KEEP_DRAWN) -> float | None:
    """The `attention_peak` below which an object is taken as not drawn: the highest cut that still keeps
    `keep` of the drawn validation objects (so it drops as many undrawn ones as that allows), placed midway
    between neighbouring peaks. None when validation has no undrawn object to learn from, or when no such cut
    drops any undrawn object (the peak does not separate them)."""
    objs = [o for o in val.objects if o.peak is not None]
    drawn = np.array([o.peak for o in objs if o.drawn])
    undrawn = np.array([o.peak for o in objs if not o.drawn])
    if not len(drawn) or not len(undrawn):
        return None
    peaks = np.unique(np.concatenate([drawn, undrawn]))
    cuts = (peaks[1:] + peaks[:-1]) / 2
    ok = np.flatnonzero((drawn[None] >= cuts[:, None]).mean(1) >= keep)
    if not len(ok) or not (undrawn < cuts[ok[-1]]).any():
        return None
    best = int(ok[-1])
    cut = float(cuts[best])
    short = float(f"{cut:.4g}")  # readable in cards, unless rounding would move it past a peak
    return short if peaks[best] < short <= peaks[best + 1] else cut


def score_drawn_filter(test: SplitRecords, min_peak: float | None) -> dict:
    """How well `attention_peak` tells drawn from undrawn objects, and what dropping those below `min_peak`
    does: the share of drawn objects kept, of undrawn ones dropped, and of kept objects that were drawn."""
    objs = [o for o in test.objects if o.peak is not None]
    auc = _auc([o.peak for o in objs if o.drawn], [o.peak for o in objs if not o.drawn])
    out = {"auc": None if auc is None else round(auc, 4),
           "drawn_share_of_all": round(sum(o.drawn for o in objs) / max(len(objs), 1), 4),
           "min_attention_peak": min_peak, "target_drawn_kept": KEEP_DRAWN, "drawn_kept": None, "undrawn_dropped": None,
           "drawn_share_of_kept": None}
    if min_peak is None:
        return out
    kept = [o for o in objs if o.peak >= min_peak]
    n_drawn, n_undrawn = sum(o.drawn for o in objs), sum(not o.drawn for o in objs)
    kept_drawn = sum(o.drawn for o in kept)
    out.update(drawn_kept=round(kept_drawn / n_drawn, 4) if n_drawn else None,
               undrawn_dropped=round(1 - (len(kept) - kept_drawn) / n_undrawn, 4) if n_undrawn else None,
               drawn_share_of_kept=round(kept_drawn / len(kept), 4) if kept else None)
    return out


def segmenter_ceiling(num_scenes: int = 200, seed: int = 4242) -> float:
    """mIoU of the colour segmenter against the exact masks of rendered scenes."""
    world = ShapesWorld(seed=seed)
    specs = world.scenes(num_scenes)
    images, masks = world.render(specs)
    ious = []
    for img, spec, m in zip(images, specs, masks):
        cm = colour_masks(img.numpy())
        ious += [_iou(cm[o.color], m[k].numpy()) for k, o in enumerate(spec.objects) if m[k].any()]
    return float(np.mean(ious))


def autoencoder_ceiling(vae, num_scenes: int = 200, seed: int = 4242, batch_size: int = 50) -> dict:
    """The judge's verdict on rendered scenes after a round trip through the pipeline's VAE: the best a
    generator with this decoder could score on drawn objects, right colour and shape, and extra objects.
    It tells whether the UNet or the autoencoder is what keeps a score down."""
    import torch

    world = ShapesWorld(seed=seed)
    specs = world.scenes(num_scenes)
    images, _ = world.render(specs)
    param = next(vae.parameters())
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x[i : i + batch_size].to(param)).latent_dist.mode()).sample.float()
                         for i in range(0, len(x), batch_size)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    classifier = ShapeClassifier.pretrained()
    n = drawn = right = extra_scenes = 0
    for spec, img in zip(specs, rec):
        judgements, extra = judge_scene(img, [(o.color, o.shape) for o in spec.objects], classifier)
        n += len(judgements)
        drawn += sum(j.drawn for j in judgements)
        right += sum(j.drawn and j.shape_ok for j in judgements)
        extra_scenes += bool(extra)
    return {"scenes": num_scenes, "drawn_share": round(drawn / n, 4),
            "right_colour_and_shape_share": round(right / n, 4),
            "scenes_with_extra_object_share": round(extra_scenes / num_scenes, 4)}


@dataclass
class MaskEvalConfig:
    num_scenes: int = 200
    num_val: int = 50
    num_inference_steps: int = 25
    guidance_scale: float | None = None  # None: the model folder's recommendation, else 4.0
    batch_size: int = 16
    seed: int = 777  # test scenes; validation uses seed + 1; training used 10_000+
    # Guidance scales compared on the validation scenes with the chosen capture (empty: keep guidance_scale).
    # Judged by mIoU with undrawn objects as 0: guidance trades objects drawn against how well each is drawn.
    guidance_sweep: tuple[float, ...] = ()


def sweep_settings(pipe) -> list[tuple[tuple[int, ...], tuple[float, float]]]:
    """Capture settings worth comparing on this UNet: its two finest cross-attention resolutions together and
    alone, over all steps and over the second half (the literature's candidates)."""
    from ..attention.unet import cross_attention_factors

    factors = sorted({f for name, f in cross_attention_factors(pipe.unet).items() if not name.startswith("mid_block")})
    fine = tuple(factors[:2])
    layer_sets = [fine] + ([(f,) for f in fine] if len(fine) > 1 else [])
    return [(fs, w) for fs in layer_sets for w in ((0.0, 1.0), (0.5, 1.0))]


def evaluate_masks(pipe, cfg: MaskEvalConfig, sweep: bool = False, capture=None) -> dict:
    """Score the maps on `cfg.num_scenes` test scenes. The threshold (and with `sweep`, the capture setting)
    is chosen on the separate validation scenes; only the chosen setting is run on the test scenes.
    Without `sweep`, `capture` is scored (default: the model folder's recommendation, else the UNet's two
    finest cross-attention resolutions over all steps)."""
    from ..attention import CaptureConfig
    from ..generate import FreeATMGenerator
    from ..generate.pipelines import pipeline_recommendation
    from ..masks import REFINE_MODES
    from .model import GUIDANCE_SCALE
    from .train_t2i import TRAIN_WORLD_OFFSET

    recommended = pipeline_recommendation(pipe) or {}
    training = recommended.get("training") or {}
    # Each run's training world as recorded; a run from before the seed was recorded used the default run's.
    runs = training.get("runs") or ([training] if training else [{}])
    trained = {r.get("world_seed", TRAIN_WORLD_OFFSET) for r in runs}
    overlap = sorted({cfg.seed, cfg.seed + 1} & trained)
    if overlap:
        raise ValueError(f"seed {cfg.seed}: the test (seed) or validation (seed + 1) scenes would be the model's "
                         f"training scenes (world seed {overlap[0]}); pick a seed away from {sorted(trained)}")
    if cfg.guidance_scale is None:
        g = recommended.get("guidance_scale")
        cfg = replace(cfg, guidance_scale=float(GUIDANCE_SCALE if g is None else g))
    classifier = ShapeClassifier.pretrained()
    test_specs = ShapesWorld(seed=cfg.seed).scenes(cfg.num_scenes)
    val_specs = ShapesWorld(seed=cfg.seed + 1).scenes(cfg.num_val)
    val_seeds = list(range(10**6, 10**6 + len(val_specs)))
    kw = dict(num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    if sweep:
        captures = [CaptureConfig(down_factors=f, step_window=w) for f, w in sweep_settings(pipe)]
    else:
        rec = recommended.get("capture")
        factors, window = sweep_settings(pipe)[0]
        captures = [capture or (CaptureConfig.from_dict(rec) if rec else CaptureConfig(factors, step_window=window))]
    candidates, val_by_capture = [], []
    for c in captures:
        # Raw maps from the generator; the guided refinement is applied to the same maps offline, so both are
        # judged on identical pictures.
        val = collect(FreeATMGenerator(pipe, c, refine="none"), val_specs, val_seeds, cfg.batch_size, classifier,
                      desc=f"validation, capture {list(c.down_factors)} {list(c.step_window)}", **kw)
        val_by_capture.append(val)
        for refine in REFINE_MODES:
            threshold, val_scores = choose_threshold(val, refine)
            candidates.append({"down_factors": list(c.down_factors), "step_window": list(c.step_window),
                               "refine": refine, "threshold": threshold, "val_miou": val_scores[str(threshold)],
                               "val_miou_by_threshold": val_scores})
            logger.info("capture %s window %s refine %s: validation mIoU %.3f at threshold %s", c.down_factors,
                        c.step_window, refine, val_scores[str(threshold)], threshold)
    best = max(candidates, key=lambda r: r["val_miou"])
    # The unrefined maps of the chosen capture are scored on the test scenes too, so the card shows both.
    raw = next(r for r in candidates if r["refine"] == "none" and r["down_factors"] == best["down_factors"]
               and r["step_window"] == best["step_window"])
    # The capture validated, as it was validated (its weights included): test scenes and cut use the same.
    i = [list(c.down_factors) == best["down_factors"] and list(c.step_window) == best["step_window"]
         for c in captures].index(True)
    chosen, chosen_val = captures[i], val_by_capture[i]
    guidance, val_by_guidance = [], {}
    for g in cfg.guidance_sweep:
        val = collect(FreeATMGenerator(pipe, chosen, refine="none"), val_specs, val_seeds, cfg.batch_size, classifier,
                      desc=f"validation, guidance {g}", **{**kw, "guidance_scale": g})
        val_by_guidance[g] = val
        threshold, val_scores = choose_threshold(val, best["refine"])
        raw_threshold, _ = choose_threshold(val, "none")
        drawn_share = sum(o.drawn for o in val.objects) / max(len(val.objects), 1)
        guidance.append({"guidance_scale": g, "threshold": threshold, "threshold_unrefined": raw_threshold,
                         "val_miou": val_scores[str(threshold)], "val_drawn_share": round(drawn_share, 4),
                         "val_miou_undrawn_as_zero": round(val_scores[str(threshold)] * drawn_share, 4)})
        logger.info("guidance %s: validation mIoU %.3f, drawn %.1f %%", g, guidance[-1]["val_miou"],
                    100 * drawn_share)
    if guidance:
        g_best = max(guidance, key=lambda r: r["val_miou_undrawn_as_zero"])
        kw["guidance_scale"] = g_best["guidance_scale"]
        best = {**best, "threshold": g_best["threshold"]}
        raw = {**raw, "threshold": g_best["threshold_unrefined"]}
        chosen_val = val_by_guidance[g_best["guidance_scale"]]
    # The peak that flags undrawn objects, chosen on the validation scenes of the capture and guidance used.
    min_peak = choose_min_peak(chosen_val)
    test = collect(FreeATMGenerator(pipe, chosen, refine="none"), test_specs, list(range(len(test_specs))),
                   cfg.batch_size, classifier, desc="test", **kw)
    return {"config": asdict(cfg), "segmenter_ceiling_miou": round(segmenter_ceiling(), 4),
            "autoencoder_ceiling": autoencoder_ceiling(pipe.vae),
            "capture": {"down_factors": best["down_factors"], "step_window": best["step_window"],
                        "threshold": best["threshold"], "refine": best["refine"]},
            "guidance_scale": kw["guidance_scale"],
            "test": score(test, best["threshold"], best["refine"]),
            "test_unrefined": score(test, raw["threshold"], "none"),
            "drawn_filter": score_drawn_filter(test, min_peak),
            "validation": candidates, "validation_guidance": guidance}


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2)
