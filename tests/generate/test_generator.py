"""`FreeATMGenerator`'s own options (the capture itself is checked in tests/attention)."""

import numpy as np
import pytest
import torch

from freeatm_hf.generate import FreeATMGenerator
from freeatm_hf.masks import mask_from_map, refine_maps
from freeatm_hf.prompts import Prompt

PROMPTS = [Prompt.from_nouns("a red car parked on a city street", ["car", "street"]),
           Prompt.from_nouns("a dog with a ball on a lawn", ["dog", "ball"])]


def test_guided_refinement_is_the_raw_maps_filtered_on_the_same_images(tiny_pipe):
    raw = FreeATMGenerator(tiny_pipe, refine="none")(PROMPTS, seeds=[3, 4], num_inference_steps=2)
    guided = FreeATMGenerator(tiny_pipe, refine="guided", threshold=0.5)(PROMPTS, seeds=[3, 4], num_inference_steps=2)
    for a, b, image_a, image_b in zip(raw.objects, guided.objects, raw.images, guided.images):
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b))  # refinement never touches the image
        assert a[0].soft_map.shape == (32, 32)  # map resolution (the tiny model captures a 32×32 grid)
        expected = refine_maps(image_a, [o.soft_map for o in a])
        assert [o.name for o in b] == [o.name for o in a]
        for o, e in zip(b, expected):
            assert o.soft_map.shape == (64, 64) and o.soft_map.dtype == np.float32
            np.testing.assert_allclose(o.soft_map, e, rtol=1e-5, atol=1e-7)
            m = mask_from_map(e, 0.5, image_size=(64, 64))
            assert np.array_equal(o.mask.mask, m.mask) and o.mask.bbox == m.bbox
            assert o.attention_uint8.shape == (64, 64)
        # The peak is the captured map's, before normalization and refinement, either way.
        for o, r in zip(b, a):
            assert o.attention_peak == r.attention_peak == pytest.approx(float(r.soft_map.max()))


def test_refine_comes_from_the_model_folder_and_is_validated(tiny_pipe, monkeypatch):
    import freeatm_hf.generate.generator as generator

    assert FreeATMGenerator(tiny_pipe).refine == "none"
    monkeypatch.setattr(generator, "pipeline_recommendation", lambda pipe, revision=None: {"refine": "guided"})
    assert FreeATMGenerator(tiny_pipe).refine == "guided"
    assert FreeATMGenerator(tiny_pipe, refine="none").refine == "none"
    with pytest.raises(ValueError, match="refine must be one of"):
        FreeATMGenerator(tiny_pipe, refine="crf")


def test_guidance_comes_from_the_model_folder_unless_a_call_or_the_constructor_gives_one(tiny_pipe, monkeypatch):
    import freeatm_hf.generate.generator as generator

    seen = []
    real_call = type(tiny_pipe).__call__
    monkeypatch.setattr(type(tiny_pipe), "__call__",
                        lambda self, **kw: seen.append(kw["guidance_scale"]) or real_call(self, **kw))
    prompt, kw = PROMPTS[:1], dict(seeds=[0], num_inference_steps=1)
    FreeATMGenerator(tiny_pipe)(prompt, **kw)  # no recommendation: the SD default
    monkeypatch.setattr(generator, "pipeline_recommendation", lambda pipe, revision=None: {"guidance_scale": 4.0})
    gen = FreeATMGenerator(tiny_pipe)
    gen(prompt, **kw)
    gen(prompt, guidance_scale=1.5, **kw)
    FreeATMGenerator(tiny_pipe, guidance_scale=2.5)(prompt, **kw)
    # A recommended 0 is a value: a distilled (Turbo) model runs without guidance, its threshold 0 is kept.
    monkeypatch.setattr(generator, "pipeline_recommendation",
                        lambda pipe, revision=None: {"guidance_scale": 0.0, "threshold": 0.0})
    zero = FreeATMGenerator(tiny_pipe)
    zero(prompt, **kw)
    assert seen == [7.5, 4.0, 1.5, 2.5, 0.0] and zero.threshold == 0.0


def test_the_recommendation_is_read_at_the_revision_the_pipeline_was_loaded_at(tiny_pipe, monkeypatch):
    import freeatm_hf.generate.generator as generator

    recs = {None: {"threshold": 0.3}, "v1": {"threshold": 0.8}}
    monkeypatch.setattr(generator, "pipeline_recommendation", lambda pipe, revision=None: recs[revision])
    assert FreeATMGenerator(tiny_pipe).threshold == 0.3
    assert FreeATMGenerator(tiny_pipe, revision="v1").threshold == 0.8


def test_a_flat_map_stays_empty_through_guided_refinement(tiny_pipe, monkeypatch):
    """The guided filter's float32 ripple on a flat map (~1e-6 relative) must not become a full-image mask."""
    gen = FreeATMGenerator(tiny_pipe, refine="guided")
    real = gen.store.object_maps
    monkeypatch.setattr(gen.store, "object_maps", lambda groups: [[torch.full_like(m, v) for m, v in zip(ms, (1e-3, 0.37))]
                                                                  for ms in real(groups)])
    out = gen(PROMPTS[:1], seeds=[0], num_inference_steps=1)
    assert len(out.objects[0]) == 2
    for o in out.objects[0]:
        assert o.mask.empty and o.mask.bbox is None and not o.attention_uint8.any()
        assert o.soft_map.shape == (64, 64)


def test_guided_refinement_reads_tensor_images_as_channels_first(tiny_pipe):
    """output_type="pt" gives (C, H, W) images: refined maps are the same as from the PIL images, at image size."""
    pil = FreeATMGenerator(tiny_pipe, refine="guided")(PROMPTS[:1], seeds=[3], num_inference_steps=2)
    pt = FreeATMGenerator(tiny_pipe, refine="guided")(PROMPTS[:1], seeds=[3], num_inference_steps=2, output_type="pt")
    h, w = np.asarray(pil.images[0]).shape[:2]
    for a, b in zip(pil.objects[0], pt.objects[0]):
        assert b.soft_map.shape == (h, w)
        np.testing.assert_allclose(b.soft_map, a.soft_map, atol=0.02)  # PIL rounds the guide to 8 bits
    with pytest.raises(ValueError, match="not with output_type='latent'"):
        FreeATMGenerator(tiny_pipe, refine="guided")(PROMPTS[:1], seeds=[3], num_inference_steps=2, output_type="latent")


def test_fused_projections_are_refused_before_generating():
    """The fused processor computes keys through `to_kv`, which capture does not see: named before denoising,
    not as 'no attention was captured' after it."""
    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.fuse_qkv_projections()
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="fuse_qkv_projections.*unfuse_qkv_projections"):
        FreeATMGenerator(pipe)(PROMPTS[:1], seeds=[0], num_inference_steps=2)
    assert calls == []


def test_the_other_denoiser_familys_capture_settings_are_refused(tiny_pipe):
    """Dropped, they would still be written into the dataset card as the capture used."""
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.generate.tiny import tiny_sd3_pipeline

    with pytest.raises(ValueError, match="mmdit_blocks='all' picks MM-DiT blocks .* a UNet pipeline has none"):
        FreeATMGenerator(tiny_pipe, CaptureConfig(mmdit_blocks="all"), threshold=0.4, refine="none", guidance_scale=1.0)
    sd3 = tiny_sd3_pipeline()
    with pytest.raises(ValueError, match=r"include_mid captures a UNet's mid block; an MM-DiT \(sd3\) has none"):
        FreeATMGenerator(sd3, CaptureConfig(include_mid=True, down_factors=(2,)), threshold=0.4, refine="none",
                         guidance_scale=1.0)
    with pytest.raises(ValueError, match=r"down_factors \[4\]: every MM-DiT \(sd3\) block works on the patch grid"):
        FreeATMGenerator(sd3, CaptureConfig(down_factors=(4,)), threshold=0.4, refine="none", guidance_scale=1.0)
    # What fits each family is taken: the UNet default on MM-DiT becomes the patch grid.
    assert FreeATMGenerator(sd3, CaptureConfig(), threshold=0.4, refine="none", guidance_scale=1.0).capture.down_factors == (2,)
    FreeATMGenerator(sd3, CaptureConfig(down_factors=(2,), mmdit_blocks="all"), threshold=0.4, refine="none",
                     guidance_scale=1.0)


def test_boxes_of_a_non_square_image_are_in_its_pixels(tiny_pipe):
    """A mask cell (r, c) of an h×w map covers rows [r·H/h, (r+1)·H/h) and columns [c·W/w, (c+1)·W/w) of the H×W
    image: the height scales the rows and the width the columns."""
    height, width = 64, 32
    out = FreeATMGenerator(tiny_pipe, threshold=0.4)(PROMPTS[:1], seeds=[3], num_inference_steps=2, height=height,
                                                     width=width)
    assert np.asarray(out.images[0]).shape[:2] == (height, width)
    boxed = [o for o in out.objects[0] if not o.mask.empty]
    assert boxed
    for o in boxed:
        h, w = o.mask.mask.shape
        assert h != w  # the map keeps the image's aspect
        ys, xs = np.nonzero(o.mask.mask)
        sy, sx = height / h, width / w
        assert o.mask.bbox == pytest.approx((xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy))


def test_sdxls_denoising_end_keeps_a_timestep_on_the_cut():
    """With `denoising_end` cutting exactly on a timestep, the number of denoiser calls the step window divides is
    the number SDXL's base pipeline makes (counted on its UNet), the timestep on the cut included."""
    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline(sdxl=True)
    gen = FreeATMGenerator(pipe)
    pipe.scheduler.set_timesteps(5)
    timesteps = pipe.scheduler.timesteps.tolist()
    n = pipe.scheduler.config.num_train_timesteps
    end = (n - timesteps[2]) / n  # the cut falls on the third timestep
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            pipe("a dog", num_inference_steps=5, denoising_end=end, guidance_scale=1.0, output_type="latent")
    finally:
        hook.remove()
    assert len(calls) == 3
    assert gen._denoiser_calls(end) == len(calls)
    assert gen._denoiser_calls(None) == gen._denoiser_calls(1.0) == len(timesteps)


def test_the_stored_8_bit_map_is_the_normalized_map_rounded():
    """Each stored value is the nearest 8-bit level of the min-max normalized map (within half a level), the
    ends at 0 and 255; a flat map stores zeros."""
    from freeatm_hf.generate.generator import GeneratedObject

    rng = np.random.default_rng(0)
    soft = rng.random((16, 12)).astype(np.float32) * 0.3 + 0.01
    o = GeneratedObject("dog", -1, (2,), soft, mask_from_map(soft, 0.4), float(soft.max()))
    stored = o.attention_uint8
    assert stored.dtype == np.uint8 and stored.shape == soft.shape
    normalized = (soft.astype(np.float64) - soft.min()) / (soft.max() - soft.min())
    assert np.abs(stored / 255.0 - normalized).max() <= 0.5 / 255 + 1e-6
    assert stored.min() == 0 and stored.max() == 255
    flat = np.full((4, 4), 0.2, np.float32)
    assert not GeneratedObject("dog", -1, (2,), flat, mask_from_map(flat, 0.4)).attention_uint8.any()


def test_one_seed_per_image_is_checked_before_generating(tiny_pipe):
    calls = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for seeds in ([0], [0, 1, 2]):
            with pytest.raises(ValueError, match=f"2 prompts but {len(seeds)} seeds: one seed per image"):
                FreeATMGenerator(tiny_pipe)(PROMPTS, seeds=seeds, num_inference_steps=1)
    finally:
        hook.remove()
    assert calls == []


def test_rows_of_np_and_pt_outputs_hold_the_images_a_pil_output_holds(tiny_pipe):
    """`output_to_rows` takes what the library API returns for every picture output type (diffusers' float arrays
    and tensors in [0, 1] made 8-bit as its own PIL output is); latents are refused by name."""
    from freeatm_hf.generate.schema import IMAGE, as_pil, output_to_rows

    gen = FreeATMGenerator(tiny_pipe)
    rows = {t: output_to_rows(gen(PROMPTS, seeds=[0, 1], num_inference_steps=2, output_type=t))
            for t in ("pil", "np", "pt")}
    for t in ("np", "pt"):
        for got, want in zip(rows[t], rows["pil"]):
            assert got[IMAGE].mode == "RGB" and np.array_equal(np.asarray(got[IMAGE]), np.asarray(want[IMAGE]))
    with pytest.raises(ValueError, match="latents can't be stored"):
        as_pil(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match=r"neither 8-bit nor float in \[0, 1\]"):
        as_pil(np.full((8, 8, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        as_pil(np.full((8, 8, 3), np.nan, np.float32))
    assert np.array_equal(np.asarray(as_pil(np.full((2, 2, 1), 0.5, np.float32))), np.full((2, 2), 128))


def test_a_pipeline_without_text_to_attend_to_is_refused_by_name():
    """An unconditional DDPM has a UNet (the old check passed it) and failed at the first call on a missing attribute."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, layers_per_block=1)
    with pytest.raises(ValueError, match="DDPMPipeline: not a text-to-image pipeline freeatm can capture"):
        FreeATMGenerator(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


def test_a_guidance_scale_that_is_not_a_finite_non_negative_number_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0, got nan"):
        FreeATMGenerator(tiny_pipe, guidance_scale=float("nan"))
    gen = FreeATMGenerator(tiny_pipe, guidance_scale=3.0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0, got -2"):
        gen([Prompt.from_nouns("a cat", ["cat"])], seeds=[0], num_inference_steps=1, guidance_scale=-2)


def test_a_single_prompt_is_a_batch_of_one_not_a_batch_of_its_characters(tiny_pipe):
    """`gen("ab", seeds=[0, 1])` generated the prompts "a" and "b"; `gen("a dog", seeds=[0])` failed with "5 prompts
    but 1 seeds"."""
    gen = FreeATMGenerator(tiny_pipe)
    out = gen("a dog", seeds=0, num_inference_steps=1)
    assert [p.text for p in out.prompts] == ["a dog"] and out.seeds == [0] and len(out.images) == 1
    one = gen(PROMPTS[1], seeds=[3], num_inference_steps=1)
    listed = gen([PROMPTS[1]], seeds=[3], num_inference_steps=1)
    assert one.prompts == [PROMPTS[1]] and [o.name for o in one.objects[0]] == ["dog", "ball"]
    assert np.array_equal(one.objects[0][0].soft_map, listed.objects[0][0].soft_map)
    with pytest.raises(ValueError, match="1 prompts but 2 seeds"):
        gen("ab", seeds=[0, 1], num_inference_steps=1)


def test_a_threshold_out_of_range_is_refused_when_the_generator_is_built(tiny_pipe):
    """It was refused only at the first mask, after the whole denoising run of a batch with nouns (and never for a
    batch of plain strings)."""
    calls = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for bad in (40, -0.1, "Otsu"):
            with pytest.raises(ValueError, match="threshold must be a number in"):
                FreeATMGenerator(tiny_pipe, threshold=bad)
    finally:
        hook.remove()
    assert calls == []
    assert FreeATMGenerator(tiny_pipe, threshold="otsu").threshold == "otsu"
    assert FreeATMGenerator(tiny_pipe, threshold=0).threshold == 0.0


@pytest.mark.parametrize("kwargs, says", [(dict(num_images_per_prompt=2), "num_images_per_prompt=2"),
                                          (dict(return_dict=False), "return_dict=False")])
def test_pipeline_options_that_break_one_image_per_seed_are_refused_before_generating(tiny_pipe, kwargs, says):
    """diffusers said "generators of length 1" (several images of a prompt) or the tuple it returned had no
    `.images`; the stock values pass."""
    gen = FreeATMGenerator(tiny_pipe)
    calls = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=f"{says} is not supported with capture"):
            gen(PROMPTS[1], seeds=[0], num_inference_steps=1, **kwargs)
    finally:
        hook.remove()
    assert calls == []
    out = gen(PROMPTS[1], seeds=[0], num_inference_steps=1, num_images_per_prompt=1, return_dict=True)
    assert len(out.images) == 1


def test_without_a_size_the_image_is_the_pipelines_default_also_for_a_non_square_unet():
    """A UNet whose config gives `sample_size` as (height, width): the pipeline's own default is that size, not a
    square of its height."""
    from diffusers import StableDiffusionPipeline

    from freeatm_hf.generate.tiny import tiny_pipeline

    parts = tiny_pipeline().components
    parts["unet"].register_to_config(sample_size=[32, 16])
    pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(PROMPTS[0].text, num_inference_steps=1, output_type="np").images[0]
    out = FreeATMGenerator(pipe)(PROMPTS[:1], seeds=[0], num_inference_steps=1, output_type="np")
    assert plain.shape == out.images[0].shape == (64, 32, 3)
    assert out.objects[0][0].soft_map.shape == (32, 16)


def test_a_prompt_that_a_multi_vector_textual_inversion_rewrites_is_refused_not_mapped_to_shifted_columns():
    """The pipeline expands a multi-vector textual-inversion token ("<toy>" → "<toy> <toy>_1 <toy>_2") before
    encoding: every noun after it sits further along than in the prompt as written, so its columns would be
    another token's."""
    from freeatm_hf.attention import object_token_indices
    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.tokenizer.add_tokens(["<toy>", "<toy>_1", "<toy>_2"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    prompt = Prompt.from_nouns("a <toy> next to a dog", ["dog"])
    seen = pipe.tokenizer.convert_ids_to_tokens(
        pipe.tokenizer(pipe.maybe_convert_prompt(prompt.text, pipe.tokenizer)).input_ids)
    (dog,) = object_token_indices(pipe.tokenizer, prompt)
    assert seen.index("dog</w>") == dog.token_indices[0] + 2  # further along than in the prompt as written
    gen = FreeATMGenerator(pipe)
    with pytest.raises(ValueError, match="multi-vector textual inversion"):
        gen([prompt], seeds=[0], num_inference_steps=1)
    # A single-vector token is left as written: its prompt is captured as usual.
    pipe.tokenizer.add_tokens(["<cat>"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    out = gen([Prompt.from_nouns("a <cat> next to a dog", ["dog"])], seeds=[0], num_inference_steps=1)
    assert [o.name for o in out.objects[0]] == ["dog"]


def test_a_cut_off_noun_is_reported_with_its_images_seed_and_prompt_not_its_place_in_the_batch(tiny_pipe, caplog):
    """`freeatm generate` calls the generator batch by batch: "prompt 1" named the second prompt of some batch, which
    no row, log line or prompts-file line could be matched with. The seed (seed + row index) and the text can."""
    long = Prompt.from_nouns("a dog " + "on a very green lawn " * 20 + "with a cat", ["dog", "cat"])
    short = Prompt.from_nouns("a dog with a cat", ["dog", "cat"])
    with caplog.at_level("WARNING"):
        FreeATMGenerator(tiny_pipe)([short, long], seeds=[41, 42], num_inference_steps=1, output_type="np")
    (record,) = [r for r in caplog.records if "cut off" in r.getMessage()]
    message = record.getMessage()
    assert "seed 42" in message and "'a dog on a very green lawn" in message and "prompt 1" not in message
    assert "['cat'] cut off by the 77-token CLIP limit" in message
