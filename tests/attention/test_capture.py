"""The captured maps against probabilities computed explicitly by an independent reference path."""

import re

import numpy as np
import pytest
import torch

from freeatm_hf.attention import AttentionStore, CaptureConfig, capture_unet, cross_attention_factors
from freeatm_hf.generate import FreeATMGenerator
from freeatm_hf.prompts import Prompt

PROMPTS = [
    Prompt.from_nouns("a golden retriever with a tennis ball is playing in a park", ["golden retriever", "tennis ball"]),
    Prompt.from_nouns("a red car parked on a city street", ["car", "street"]),
]


class Reference:
    """Records explicit softmax(QKᵀ·scale) of every cross-attention layer, per UNet call.

    The output is still the layer's own processor (so the denoising trajectory is the one the capture
    sees); the probabilities come from `attn.get_attention_scores` in float64, and each layer's grid
    (h, w) is read from the 4-D input of its `Transformer2DModel`, not derived from the latent size.
    """

    def __init__(self, unet):
        self.records, self.step, self.hw = [], -1, {}
        self.handles = [unet.register_forward_pre_hook(self._next_step)]
        self.originals = {}
        factors = cross_attention_factors(unet)
        for name, module in unet.named_modules():
            if module.__class__.__name__ == "Transformer2DModel":
                self.handles.append(module.register_forward_pre_hook(self._grid(name)))
        modules = dict(unet.named_modules())
        for name, f in factors.items():
            attn = modules[name]
            self.originals[name] = attn.processor
            attn.processor = self._recorder(name, f, attn.processor)

    def _next_step(self, module, args):
        self.step += 1

    def _grid(self, name):
        def hook(module, args):
            self.hw[name] = tuple(args[0].shape[-2:])

        return hook

    def _recorder(self, name, factor, original):
        parent = name.split(".transformer_blocks")[0]

        def proc(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
            out = original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)
            q = attn.head_to_batch_dim(attn.to_q(hidden_states)).double()
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states)).double()
            probs = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)
            assert torch.allclose(probs.sum(-1), torch.ones((), dtype=probs.dtype))  # rows over all keys
            probs = probs.view(-1, attn.heads, *probs.shape[1:])
            self.records.append((self.step, name, factor, self.hw[parent], probs))
            return out

        return proc

    def remove(self, unet):
        for h in self.handles:
            h.remove()
        modules = dict(unet.named_modules())
        for name, p in self.originals.items():
            modules[name].processor = p

    def token_maps(self, batch, token_index, num_steps, config: CaptureConfig, weight=lambda name: 1.0):
        sums, counts, grids = {}, {}, {}
        start, end = config.step_window
        for step, name, factor, hw, probs in self.records:
            if factor not in config.down_factors or (name.startswith("mid_block") and not config.include_mid):
                continue
            if not start <= step / num_steps < end:
                continue
            cond = probs[-batch:].mean(1)  # (b, N, L), conditional half is last under CFG
            sel = torch.stack([cond[b][:, token_index[b]] for b in range(batch)])  # (b, N, T)
            m = sel.transpose(1, 2).reshape(batch, token_index.shape[1], *hw)
            sums[factor] = sums.get(factor, 0) + weight(name) * m
            counts[factor] = counts.get(factor, 0) + weight(name)
            grids[factor] = hw
        return {f: sums[f] / counts[f] for f in sums}


def run_with_reference(pipe, prompts, config, steps=4, guidance=7.5, height=None, width=None, **pipe_kwargs):
    gen = FreeATMGenerator(pipe, config)
    stores = []
    original_begin = AttentionStore.begin

    def spy(self, *a, **kw):
        stores.append(self)
        return original_begin(self, *a, **kw)

    ref = Reference(pipe.unet)
    try:
        AttentionStore.begin = spy
        out = gen(prompts, seeds=list(range(len(prompts))), num_inference_steps=steps, guidance_scale=guidance,
                  height=height, width=width, output_type="np", **pipe_kwargs)
    finally:
        AttentionStore.begin = original_begin
        ref.remove(pipe.unet)
    return out, stores[0], ref


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_captured_maps_equal_explicit_probabilities(tiny_pipe, guidance):
    config = CaptureConfig()
    out, store, ref = run_with_reference(tiny_pipe, PROMPTS, config, guidance=guidance)
    expected = ref.token_maps(len(PROMPTS), store.token_index, 4, config)
    got = store.token_maps()
    assert set(got) == {2, 4}
    for f in got:
        assert got[f].shape == expected[f].shape
        torch.testing.assert_close(got[f].double(), expected[f], rtol=1e-5, atol=1e-7)
    # The token columns are the objects' tokens, and each object's map is the mean of its columns.
    assert store.token_index[0].tolist() == [2, 3, 6, 7, 0, 0, 0, 0]  # padded to a multiple of 8


def test_step_window_and_mid_block_and_factor_choice(tiny_pipe):
    config = CaptureConfig(down_factors=(4,), include_mid=True, step_window=(0.5, 1.0))
    out, store, ref = run_with_reference(tiny_pipe, PROMPTS, config)
    expected = ref.token_maps(len(PROMPTS), store.token_index, 4, config)
    # steps 2 and 3 of 4, each with the four factor-4 layers: down_blocks.2, mid_block, up_blocks.0 (×2)
    assert store.weights_added() == {4: 2 * 4}
    torch.testing.assert_close(store.token_maps()[4].double(), expected[4], rtol=1e-5, atol=1e-7)


def test_layer_weights_make_each_resolution_a_weighted_mean_over_its_layers(tiny_pipe):
    config = CaptureConfig(down_factors=(4,), include_mid=True,
                           layer_weights={"up_blocks.0": 3.0, "up_blocks.0.attentions.1": 0.5, "mid_block": 0.0})

    def weight(name):  # by hand: the longest prefix wins, the mid block is left out
        return 0.5 if name.startswith("up_blocks.0.attentions.1.") else 3.0 if name.startswith("up_blocks.0.") \
            else 0.0 if name.startswith("mid_block.") else 1.0

    out, store, ref = run_with_reference(tiny_pipe, PROMPTS, config)
    expected = ref.token_maps(len(PROMPTS), store.token_index, 4, config, weight)
    # 4 steps × (down_blocks.2: 1, up_blocks.0.attentions.0: 3, up_blocks.0.attentions.1: 0.5)
    assert store.weights_added() == {4: 4 * 4.5}
    torch.testing.assert_close(store.token_maps()[4].double(), expected[4], rtol=1e-5, atol=1e-7)
    unweighted = ref.token_maps(len(PROMPTS), store.token_index, 4, config)[4]
    assert (expected[4] - unweighted).abs().max() > 1e-4  # the weights did change the map
    with pytest.raises(ValueError, match="finite and >= 0"):
        CaptureConfig(layer_weights={"up_blocks": -1})
    assert CaptureConfig.from_dict(config.to_dict()) == config


def test_a_step_window_that_holds_no_step_is_refused_before_denoising(tiny_pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(type(tiny_pipe.unet), "forward", lambda *a, **k: calls.append(1))
    gen = FreeATMGenerator(tiny_pipe, CaptureConfig(down_factors=(4,), step_window=(0.5, 0.6)))
    with pytest.raises(ValueError, match=r"step_window \[0.5, 0.6\] holds none of the 1 denoiser calls"):
        gen(PROMPTS, seeds=[0, 1], num_inference_steps=1)
    assert calls == []  # refused before the UNet ran once


@pytest.mark.parametrize("scheduler, calls", [("heun", 7), ("pndm", 5)])
def test_the_step_window_divides_the_denoiser_calls_of_schedulers_that_make_more_than_one_per_step(scheduler, calls):
    """Heun calls the UNet 2N-1 times, PNDM (PLMS) N+1: the window's fractions are of those calls, not of N."""
    from diffusers import HeunDiscreteScheduler, PNDMScheduler

    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.scheduler = (HeunDiscreteScheduler.from_config(pipe.scheduler.config) if scheduler == "heun"
                      else PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True))
    config = CaptureConfig(down_factors=(4,), step_window=(0.5, 1.0))
    out, store, ref = run_with_reference(pipe, PROMPTS[:1], config, steps=4)
    assert ref.step + 1 == calls == store.num_steps
    # The last half of the calls (3 of Heun's 7, 2 of PNDM's 5), each with the three factor-4 layers.
    assert store.weights_added() == {4: 3 * len([i for i in range(calls) if i / calls >= 0.5])}
    expected = ref.token_maps(1, store.token_index, calls, config)
    torch.testing.assert_close(store.token_maps()[4].double(), expected[4], rtol=1e-5, atol=1e-7)


def test_a_layer_weight_that_matches_no_captured_layer_is_refused(tiny_pipe):
    from freeatm_hf.generate import FreeATMGenerator

    # "up_block" (no s) and a self-attention layer: neither is a captured cross-attention module.
    for key in ("up_block", "up_blocks.0.attentions.0.transformer_blocks.0.attn1"):
        gen = FreeATMGenerator(tiny_pipe, CaptureConfig(down_factors=(4,), layer_weights={key: 2.0}))
        with pytest.raises(ValueError, match=rf"layer_weights keys \['{re.escape(key)}'\] match none of the captured"):
            gen(PROMPTS, seeds=[0, 1], num_inference_steps=1)


def test_include_mid_without_the_mid_blocks_factor_is_refused_by_name(tiny_pipe):
    store = AttentionStore(CaptureConfig(down_factors=(2,), include_mid=True))
    with pytest.raises(ValueError, match=r"mid block works at down factor\(s\) \[4\].*add 4"):
        with capture_unet(tiny_pipe.unet, store):
            pass


def test_non_square_maps_keep_height_and_width(tiny_pipe):
    config = CaptureConfig()
    out, store, ref = run_with_reference(tiny_pipe, PROMPTS[:1], config, height=64, width=32)
    got = store.token_maps()
    assert out.images[0].shape == (64, 32, 3)
    assert got[2].shape[-2:] == (16, 8) and got[4].shape[-2:] == (8, 4)
    expected = ref.token_maps(1, store.token_index, 4, config)
    for f in got:
        torch.testing.assert_close(got[f].double(), expected[f], rtol=1e-5, atol=1e-7)
    assert out.objects[0][0].soft_map.shape == (32, 16)  # latent size, rows = height


def test_half_precision_projections_give_fp32_exact_probabilities():
    """bf16 queries and keys (a bf16 UNet's projections): the captured probabilities are those of these rounded
    inputs computed exactly (fp64 here), not of logits rounded to bf16, which was off by percents."""
    import types

    g = torch.Generator().manual_seed(0)
    b, n, length, heads, d = 1, 64, 77, 8, 64
    store = AttentionStore(CaptureConfig(down_factors=(1,)))
    store.begin(torch.arange(1, 9)[None], (8, 8), 0)
    store.next_step()
    # Logits of std ~4 after scaling: peaked, as in a trained model's cross-attention.
    q = (2 * torch.randn(b, n, heads * d, generator=g)).bfloat16()
    k = (2 * torch.randn(b, length, heads * d, generator=g)).bfloat16()
    attn = types.SimpleNamespace(heads=heads, scale=d ** -0.5)
    store.add(1, attn, q, k)
    qq, kk = (t.double().view(b, -1, heads, d).transpose(1, 2) for t in (q, k))
    expected = (qq @ kk.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)[..., 1:9].transpose(1, 2)
    torch.testing.assert_close(store.token_maps()[1].flatten(2).double(), expected, rtol=1e-4, atol=1e-9)


def test_images_bit_identical_with_and_without_capture(tiny_pipe):
    gen = FreeATMGenerator(tiny_pipe)
    out = gen(PROMPTS, seeds=[5, 6], num_inference_steps=4, output_type="np")
    plain = tiny_pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                      num_inference_steps=4, guidance_scale=7.5, output_type="np").images
    assert np.array_equal(np.stack(out.images), plain)


def test_keyword_arguments_the_layers_processors_take_still_reach_them_under_capture():
    """diffusers passes a processor only the cross_attention_kwargs its __call__'s signature names: the capture
    wrapper must name the same ones, or `gain` would be dropped and the image change."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from freeatm_hf.generate.tiny import tiny_pipeline

    class Gain(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0):
            return gain * super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    pipe = tiny_pipeline()
    pipe.unet.set_attn_processor({n: Gain() if "attn2" in n else AttnProcessor2_0() for n in pipe.unet.attn_processors})
    kw = dict(num_inference_steps=2, output_type="np")

    def plain(**extra):
        return pipe([PROMPTS[0].text], generator=[torch.Generator().manual_seed(0)], guidance_scale=7.5, **kw,
                    **extra).images

    out = FreeATMGenerator(pipe)(PROMPTS[:1], seeds=[0], cross_attention_kwargs={"gain": 3.0}, **kw)
    assert np.array_equal(np.stack(out.images), plain(cross_attention_kwargs={"gain": 3.0}))
    assert not np.array_equal(np.stack(out.images), plain())  # the gain is live: it changes the image


def test_batching_does_not_change_an_image_or_its_maps(tiny_pipe):
    gen = FreeATMGenerator(tiny_pipe)
    both = gen(PROMPTS, seeds=[5, 6], num_inference_steps=3, output_type="np")
    alone = gen(PROMPTS[1:], seeds=[6], num_inference_steps=3, output_type="np")
    np.testing.assert_allclose(both.images[1], alone.images[0], atol=1e-5)
    np.testing.assert_allclose(both.objects[1][0].soft_map, alone.objects[0][0].soft_map, rtol=1e-4, atol=1e-6)


def test_processors_and_hooks_restored_after_an_exception(tiny_pipe):
    unet = tiny_pipe.unet
    before = dict(unet.attn_processors)
    store = AttentionStore()
    with pytest.raises(RuntimeError, match="boom"):
        with capture_unet(unet, store):
            assert any(type(p).__name__ == "CaptureProcessor" for p in unet.attn_processors.values())
            raise RuntimeError("boom")
    assert unet.attn_processors == before
    assert not unet._forward_pre_hooks
    assert all(not m._forward_hooks for m in unet.modules())


def test_missing_resolution_is_a_clear_error(tiny_pipe):
    with pytest.raises(ValueError, match=r"no cross-attention at down factors \[8\]"):
        with capture_unet(tiny_pipe.unet, AttentionStore(CaptureConfig(down_factors=(8,)))):
            pass


def held_tensor_elements(obj, seen=None) -> int:
    """Elements of every tensor reachable from `obj`'s attributes, lists and dicts (modules and pipelines
    skipped: their weights do not depend on the run)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, torch.nn.Module) or hasattr(obj, "components"):
        return 0
    seen.add(id(obj))
    if torch.is_tensor(obj):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(held_tensor_elements(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(held_tensor_elements(v, seen) for v in obj)
    return held_tensor_elements(vars(obj), seen) if hasattr(obj, "__dict__") else 0


def test_memory_is_constant_in_the_number_of_steps(tiny_pipe):
    """Maps are summed in place: after 2 or 6 denoising steps the generator and its store hold the same tensors
    (one buffer per resolution, batch × tokens × grid); only the counts of added layer calls grow."""
    held = []
    for steps in (2, 6):
        gen = FreeATMGenerator(tiny_pipe)
        gen(PROMPTS, seeds=[0, 1], num_inference_steps=steps, output_type="np")
        held.append((held_tensor_elements(gen), gen.store.weights_added()))
    (small, counts_2), (large, counts_6) = held
    assert small == large
    assert sum(b.numel() for b in gen.store.buffers.values()) == 2 * gen.store.num_tokens * (16 * 16 + 8 * 8)
    assert counts_6 == {f: 3 * c for f, c in counts_2.items()} and all(c > 0 for c in counts_2.values())


def test_a_noun_past_the_clip_limit_gets_no_map_and_is_named_with_the_limit(tiny_pipe, caplog):
    long = Prompt.from_nouns("a dog " + "on a very green lawn " * 20 + "with a cat", ["dog", "cat"])
    with caplog.at_level("WARNING"):
        out = FreeATMGenerator(tiny_pipe)([long], seeds=[0], num_inference_steps=1, output_type="np")
    assert out.truncated == [["cat"]] and [o.name for o in out.objects[0]] == ["dog"]
    assert "['cat'] cut off by the 77-token CLIP limit" in caplog.text


def test_sdxl_pipeline_capture_and_bit_identical_images():
    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline(sdxl=True)
    config = CaptureConfig()
    out, store, ref = run_with_reference(pipe, PROMPTS, config, steps=3)
    expected = ref.token_maps(len(PROMPTS), store.token_index, 3, config)
    for f, m in store.token_maps().items():
        torch.testing.assert_close(m.double(), expected[f], rtol=1e-5, atol=1e-7)
    plain = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                 num_inference_steps=3, guidance_scale=7.5, output_type="np").images
    assert np.array_equal(np.stack(out.images), plain)


def test_the_step_window_divides_the_calls_sdxl_makes_before_handing_over_at_denoising_end():
    """SDXL's denoising_end stops the base model early (the refiner takes the rest) without shortening the
    scheduler's timesteps: the window's fractions are of the calls the base model makes."""
    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline(sdxl=True)
    config = CaptureConfig(step_window=(0.5, 1.0))
    out, store, ref = run_with_reference(pipe, PROMPTS[:1], config, steps=6, denoising_end=0.6)
    assert len(pipe.scheduler.timesteps) == 6 and ref.step + 1 == 3 == store.num_steps
    expected = ref.token_maps(1, store.token_index, 3, config)  # calls 2 and 3 of the 3 the base model made
    got = store.token_maps()
    assert set(got) == set(expected) == set(config.down_factors)
    for f in got:
        torch.testing.assert_close(got[f].double(), expected[f], rtol=1e-5, atol=1e-7)


def test_a_second_prompt_for_sdxls_other_encoder_is_refused():
    # Its tokens would sit at the positions whose columns are the first prompt's nouns.
    from freeatm_hf.generate.tiny import tiny_pipeline

    gen = FreeATMGenerator(tiny_pipeline(sdxl=True))
    with pytest.raises(ValueError, match="prompt_2 is not supported with capture"):
        gen(PROMPTS[:1], seeds=[0], num_inference_steps=2, prompt_2="an empty room")


@pytest.mark.slow
def test_capture_compiles_with_the_unet_without_recompiling_per_step_or_batch():
    """torch.compile(unet) with capture inside: same maps as eager, one graph for every step (the store's
    counts are device tensors: a Python number it changed per call was a guard, and each step a recompile),
    and later batches reuse it."""
    from torch._dynamo.utils import counters

    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    gen = FreeATMGenerator(pipe)
    eager = [gen([p], [i], num_inference_steps=4, output_type="np") for i, p in enumerate(PROMPTS)]
    pipe.unet = torch.compile(pipe.unet)
    graphs = counters["stats"]["unique_graphs"]
    compiled = gen([PROMPTS[0]], [0], num_inference_steps=4, output_type="np")
    assert counters["stats"]["unique_graphs"] == graphs + 1  # 4 steps, one graph
    again = gen([PROMPTS[1]], [1], num_inference_steps=4, output_type="np")
    assert counters["stats"]["unique_graphs"] == graphs + 1  # no recompilation for a new batch
    for out, ref in ((compiled, eager[0]), (again, eager[1])):
        np.testing.assert_allclose(out.images[0], ref.images[0], atol=1e-4)
        for a, b in zip(out.objects[0], ref.objects[0]):
            np.testing.assert_allclose(a.soft_map, b.soft_map, rtol=1e-4, atol=1e-7)


def test_factor_weights_that_cannot_make_a_mean_are_refused_at_once():
    for bad in ({2: 0.0, 4: 0.0}, {2: -1.0, 4: 2.0}, {2: float("nan"), 4: 1.0}):
        with pytest.raises(ValueError, match="factor_weights must be finite and >= 0 with a positive sum"):
            CaptureConfig(down_factors=(2, 4), factor_weights=bad)
    assert CaptureConfig(down_factors=(2, 4), factor_weights={2: 0.0, 4: 1.0}).weight(4) == 1.0


def test_grid_size_is_that_of_stride_2_convolutions_with_padding_1():
    """Odd feature maps round up at each down-sampling, as the UNet's own stride-2, padding-1 convolutions do."""
    from freeatm_hf.attention.store import grid_size

    for hw in ((34, 33), (25, 17), (7, 64), (1, 2)):
        x = torch.zeros(1, 1, *hw)
        for factor in (1, 2, 4, 8):
            assert grid_size(hw, factor) == tuple(x.shape[-2:]), (hw, factor)
            x = torch.nn.functional.conv2d(x, torch.zeros(1, 1, 3, 3), stride=2, padding=1)


def test_the_step_window_is_half_open():
    """A denoiser call i of n is inside the window [start, end) when start <= i / n < end."""
    store = AttentionStore(CaptureConfig(down_factors=(1,), step_window=(0.25, 0.75)))
    store.begin(torch.zeros(1, 8, dtype=torch.long), (4, 4), 8)
    active = []
    for _ in range(8):
        store.next_step()
        active.append(store.active)
    assert active == [0.25 <= i / 8 < 0.75 for i in range(8)] == [False, False, True, True, True, True, False, False]
    store.begin(torch.zeros(1, 8, dtype=torch.long), (4, 4), 0)  # no count of calls: no window to apply
    store.next_step()
    assert store.active


def test_an_attention_mask_is_read_from_the_conditional_half():
    """Under CFG the batch is [unconditional, conditional]: the conditional rows' own key mask enters the softmax
    (added to the logits, as diffusers' masks are), not the unconditional rows'."""
    import types

    g = torch.Generator().manual_seed(0)
    b, n, length, heads, d = 2, 16, 12, 2, 8
    store = AttentionStore(CaptureConfig(down_factors=(1,)))
    store.begin(torch.tensor([[1, 2, 3, 7], [0, 4, 5, 9]]), (4, 4), 0)
    store.next_step()
    q, k = torch.randn(2 * b, n, heads * d, generator=g), torch.randn(2 * b, length, heads * d, generator=g)
    mask = torch.zeros(2 * b, 1, length)
    mask[:b, :, 6:] = -10000.0  # the unconditional rows see only the first 6 keys
    mask[b:, :, :3] = -10000.0  # the conditional rows all but the first 3
    attn = types.SimpleNamespace(heads=heads, scale=d ** -0.5)
    store.add(1, attn, q, k, attention_mask=mask)
    qq, kk = (t[b:].double().view(b, -1, heads, d).transpose(1, 2) for t in (q, k))
    probs = (qq @ kk.transpose(-1, -2) * attn.scale + mask[b:, None].double()).softmax(-1).mean(1)  # (b, N, L)
    expected = torch.stack([probs[i][:, store.token_index[i]] for i in range(b)]).transpose(1, 2)
    torch.testing.assert_close(store.token_maps()[1].flatten(2).double(), expected, rtol=1e-5, atol=1e-7)


def test_object_maps_are_weighted_means_of_bilinearly_resized_resolutions_over_each_objects_tokens():
    """`aggregate`: each factor's mean map resized (bilinear, half-pixel centres) to `map_size`, then averaged with
    the factor weights; `object_maps`: per object, the mean of its tokens' aggregated maps. Non-square, with
    maps that differ per token, factor and sample, and two layer calls at one factor."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    config = CaptureConfig(down_factors=(2, 4), factor_weights={2: 3.0, 4: 0.5}, map_size=(12, 20))
    store = AttentionStore(config)
    store.begin(torch.tensor([[1, 2, 5], [3, 4, 6]]), (8, 12), 0)  # factor 2: 4×6, factor 4: 2×3
    store.next_step()
    maps = {2: [torch.rand(2, 3, 4, 6, generator=g) for _ in range(2)], 4: [torch.rand(2, 3, 2, 3, generator=g)]}
    for f, calls in maps.items():
        for m in calls:
            store.add_selected(f, m.flatten(2).transpose(1, 2))  # (batch, N, tokens), as the layers report
    means = {f: torch.stack(calls).mean(0) for f, calls in maps.items()}
    resized = {f: F.interpolate(m, size=(12, 20), mode="bilinear", align_corners=False) for f, m in means.items()}
    expected = (3.0 * resized[2] + 0.5 * resized[4]) / 3.5
    torch.testing.assert_close(store.aggregate(), expected)
    groups = [[[0, 1], [2]], [[2], [0, 1, 2]]]
    got = store.object_maps(groups)
    for b, objs in enumerate(groups):
        for cols, m in zip(objs, got[b]):
            torch.testing.assert_close(m, expected[b, cols].mean(0))
    # Without a map size (nor factor weights) the maps come at the latent size, the factors weighted alike.
    store.config = CaptureConfig(down_factors=(2, 4))
    at_latent = [F.interpolate(means[f], size=(8, 12), mode="bilinear", align_corners=False) for f in (2, 4)]
    torch.testing.assert_close(store.aggregate(), (at_latent[0] + at_latent[1]) / 2)


def _explicit_maps(q, k, heads, scale, token_index):
    """Head-mean softmax(q kᵀ·scale) of the conditional (last) rows at the given columns, `(b, tokens, N)`."""
    b = token_index.shape[0]
    qq, kk = (t[-b:].double().view(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
    probs = (qq @ kk.transpose(-1, -2) * scale).softmax(-1).mean(1)
    return torch.stack([probs[i][:, token_index[i]] for i in range(b)]).transpose(1, 2)


def test_a_store_reused_for_a_batch_of_the_same_shape_starts_afresh():
    """`begin` keeps same-shaped buffers (a compiled denoiser sees the same tensors) but nothing of the last batch:
    the next batch's maps are those of its own layer calls and token columns."""
    import types

    g = torch.Generator().manual_seed(0)
    attn = types.SimpleNamespace(heads=2, scale=0.25)
    store = AttentionStore(CaptureConfig(down_factors=(1,)))
    maps = []
    for token_index in (torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[7, 0, 2], [3, 3, 9]])):
        store.begin(token_index, (4, 4), 0)
        store.next_step()
        q, k = torch.randn(4, 16, 16, generator=g), torch.randn(4, 10, 16, generator=g)
        store.add(1, attn, q, k)
        maps.append(store.buffers[1])
        expected = _explicit_maps(q, k, 2, 0.25, token_index)
        torch.testing.assert_close(store.token_maps()[1].flatten(2).double(), expected)
        assert store.weights_added() == {1: 1.0}
    assert maps[0] is maps[1]  # the same buffer, zeroed in place
    # An attention batch that is neither the images nor [unconditional, conditional] is refused.
    with pytest.raises(RuntimeError, match="attention batch 6 is neither the image batch 2 nor twice it"):
        store.add(1, attn, torch.randn(6, 16, 16), torch.randn(6, 10, 16))


def test_a_resolution_that_received_no_map_is_an_error_not_nan():
    store = AttentionStore(CaptureConfig(down_factors=(1, 2)))
    store.begin(torch.zeros(1, 8, dtype=torch.long), (4, 4), 0)
    store.next_step()
    store.add_selected(1, torch.rand(1, 16, 8))
    with pytest.raises(RuntimeError, match="no attention was captured at factor 2"):
        store.token_maps()
    with pytest.raises(RuntimeError, match=r"selected maps \(1, 16, 8\) do not fit the store \(1, 4, 8\) at factor 2"):
        store.add_selected(2, torch.rand(1, 16, 8))


def test_each_layers_factor_is_its_measured_down_sampling(tiny_pipe):
    """`cross_attention_factors` against the query count each cross-attention layer sees in a forward pass."""
    unet = tiny_pipe.unet
    queries, handles = {}, []
    for name, m in unet.named_modules():
        if name.endswith("attn2"):
            def hook(module, args, kwargs, name=name):
                queries[name] = kwargs.get("hidden_states", args[0] if args else None).shape[1]

            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(torch.zeros(1, unet.config.in_channels, 32, 24), 1,
                 encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim))
    finally:
        for h in handles:
            h.remove()
    factors = cross_attention_factors(unet)
    assert set(factors) == set(queries) and len(factors) > 3
    assert {name: (32 // f) * (24 // f) for name, f in factors.items()} == queries


def test_an_encoder_attention_mask_enters_the_captured_probabilities(tiny_pipe):
    """Keys masked out by `encoder_attention_mask` are as if absent: the maps equal those of the text cut to the
    kept keys (and so does the UNet's own output)."""
    unet, keep = tiny_pipe.unet, 7
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)  # [unconditional, conditional]
    text = torch.randn(2, 12, unet.config.cross_attention_dim, generator=g)
    mask = torch.ones(2, 12)
    mask[:, keep:] = 0

    def run(text, mask):
        store = AttentionStore(CaptureConfig())
        store.begin(torch.tensor([[1, 2, 5, 6]]), (16, 16), 1)
        with capture_unet(unet, store), torch.no_grad():
            out = unet(latents, 10, encoder_hidden_states=text, encoder_attention_mask=mask).sample
        return out, store.token_maps()

    (out_masked, masked), (out_cut, cut) = run(text, mask), run(text[:, :keep], None)
    torch.testing.assert_close(out_masked, out_cut, rtol=1e-4, atol=1e-5)
    assert set(masked) == set(cut) == {2, 4}
    for f in cut:
        torch.testing.assert_close(masked[f], cut[f], rtol=1e-4, atol=1e-6)


def test_capture_wrappers_kept_between_batches_follow_a_new_processor_and_a_new_store():
    """The generator keeps its wrappers between batches; a layer given a new processor since must have it wrapped
    (the image is the new processor's), and a new store must receive the maps."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from freeatm_hf.generate.tiny import tiny_pipeline

    class Triple(AttnProcessor2_0):
        def __call__(self, *args, **kwargs):
            return 3 * super().__call__(*args, **kwargs)

    pipe = tiny_pipeline()
    gen = FreeATMGenerator(pipe)
    kw = dict(seeds=[0], num_inference_steps=1, output_type="np")
    gen(PROMPTS[:1], **kw)
    pipe.unet.set_attn_processor(Triple())
    out = gen(PROMPTS[:1], **kw)
    plain = pipe([PROMPTS[0].text], generator=[torch.Generator().manual_seed(0)], num_inference_steps=1,
                 guidance_scale=7.5, output_type="np").images
    assert np.array_equal(np.stack(out.images), plain)
    old, gen.store = gen.store, AttentionStore(gen.store.config)
    gen(PROMPTS[:1], **kw)
    assert gen.store.weights_added() == old.weights_added() and all(w > 0 for w in old.weights_added().values())


def test_a_capture_config_refuses_an_empty_window_or_factor_or_a_missing_weight_and_round_trips_through_json():
    """What a settings file records (to_dict through JSON) is what a resume compares against to_dict()."""
    import json

    for window in ((0.5, 0.5), (-0.1, 0.5), (0.5, 1.1)):
        with pytest.raises(ValueError, match="step_window must satisfy 0 <= start < end <= 1"):
            CaptureConfig(step_window=window)
    for factors in ((0,), (2, 3), ()):
        with pytest.raises(ValueError, match="down_factors must be powers of two"):
            CaptureConfig(down_factors=factors)
    with pytest.raises(ValueError, match=r"factor_weights has no weight for factors \[4\]"):
        CaptureConfig(down_factors=(2, 4), factor_weights={2: 1.0})
    config = CaptureConfig(down_factors=(1, 4), include_mid=True, step_window=(0.2, 0.9), factor_weights={1: 0.25, 4: 0.75},
                           map_size=(8, 16), mmdit_blocks="all", layer_weights={"up_blocks": 2.0})
    recorded = json.loads(json.dumps(config.to_dict()))
    assert recorded == config.to_dict() and CaptureConfig.from_dict(recorded) == config
    assert (config.weight(1), config.weight(4), CaptureConfig().weight(2)) == (0.25, 0.75, 1.0)


def test_a_layer_weight_key_matches_whole_parts_of_module_names_and_the_longest_wins():
    config = CaptureConfig(layer_weights={"transformer_blocks.1": 3.0, "transformer_blocks": 0.5,
                                          "transformer_blocks.1.attn": 2.0})
    assert config.layer_weight("transformer_blocks.1.attn") == 2.0
    assert config.layer_weight("transformer_blocks.1.norm") == 3.0 and config.layer_weight("transformer_blocks.1") == 3.0
    assert config.layer_weight("transformer_blocks.12.attn") == 0.5  # block 12 is not block 1
    assert config.layer_weight("single_transformer_blocks.1.attn") == 1.0
    config.check_layer_weights(["transformer_blocks.1.attn"])
    with pytest.raises(ValueError, match=r"layer_weights keys \['transformer_blocks.1'\] match none"):
        CaptureConfig(layer_weights={"transformer_blocks.1": 2.0}).check_layer_weights(["transformer_blocks.12.attn"])


def test_wrappers_of_one_processor_class_share_one_class_that_shows_the_processors_signature():
    """One wrapper class per processor class: a compiled denoiser sees the same type when a new store (or a new
    processor of the same class) needs new wrappers."""
    import inspect

    from diffusers.models.attention_processor import AttnProcessor2_0

    from freeatm_hf.attention.signature import wrap_processor

    class Wrapper:
        def __init__(self, original, tag):
            self.original, self.tag = original, tag

        def __call__(self, *args, **kwargs):
            return self.original(*args, **kwargs)

    a, b = wrap_processor(Wrapper, AttnProcessor2_0(), 1), wrap_processor(Wrapper, AttnProcessor2_0(), 2)
    assert type(a) is type(b) and isinstance(a, Wrapper) and (a.tag, b.tag) == (1, 2)
    assert inspect.signature(a.__call__) == inspect.signature(AttnProcessor2_0().__call__)


def test_a_pipeline_that_calls_the_unet_more_often_than_it_has_timesteps_is_stopped_not_recorded():
    """Self-attention guidance runs the UNet a second time per step on the unconditional prompt alone: a batch the
    size of the images, which would pass for the conditional half, and a step count run past the window's end."""
    from diffusers import StableDiffusionSAGPipeline

    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = StableDiffusionSAGPipeline(**tiny_pipeline().components)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        pipe(PROMPTS[0].text, num_inference_steps=2, output_type="np")
        assert calls == [2, 1, 2, 1]  # [unconditional, conditional], then the unconditional prompt alone
        with pytest.raises(RuntimeError, match="called the denoiser more often than the scheduler has timesteps"):
            FreeATMGenerator(pipe)(PROMPTS[:1], seeds=[0], num_inference_steps=2)
    finally:
        handle.remove()
    assert not pipe.unet._forward_pre_hooks  # the capture's step hook is gone after the error too


def _tiny_pipe_with_ip_adapter():
    """The tiny SD pipeline with an IP-Adapter as `load_ip_adapter` installs one: image-prompt projection and, on
    every cross-attention layer, an `IPAdapterAttnProcessor2_0` (an nn.Module holding its to_k_ip/to_v_ip)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    from freeatm_hf.generate.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    unet = pipe.unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        procs = {name: IPAdapterAttnProcessor2_0(unet.get_submodule(name[: -len(".processor")]).to_q.out_features,
                                                 32, num_tokens=(4,), scale=1.0)
                 if name.endswith("attn2.processor") else p for name, p in unet.attn_processors.items()}
        unet.set_attn_processor(procs)
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([ImageProjection(16, 32, num_image_text_embeds=4)])
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    return pipe


def test_an_ip_adapters_module_processors_are_wrapped_and_the_maps_are_the_text_attention():
    """IP-Adapter's processors are nn.Modules, registered children of their layers: the capture wrapper takes their
    place (a plain object there was refused by torch) and keeps them in the module tree; images stay bit-identical
    and the maps are the softmax over the text keys, computed here from to_q/to_k on the layers' inputs."""
    pipe = _tiny_pipe_with_ip_adapter()
    unet, factors = pipe.unet, cross_attention_factors(pipe.unet)
    before = dict(unet.attn_processors)
    kw = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np",
              ip_adapter_image_embeds=[torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(1))])
    gen = FreeATMGenerator(pipe, CaptureConfig(down_factors=(2, 4), include_mid=True))
    inside = []
    probe = unet.register_forward_pre_hook(lambda m, a: inside.append(
        {n for n, _ in unet.named_parameters() if "to_k_ip" in n}))
    out = gen(PROMPTS, seeds=[0, 1], **kw)
    probe.remove()
    assert dict(unet.attn_processors) == before
    ip_weights = {n for n, _ in unet.named_parameters() if "to_k_ip" in n}
    wrapped = {n.replace(".processor.", ".processor.original.") for n in ip_weights}  # under capture: in the wrapper
    assert len(ip_weights) == len(factors) and inside and all(s == wrapped for s in inside)

    records, handles = [], []
    for name, f in factors.items():
        def hook(attn, args, kwargs, f=f):
            q = attn.head_to_batch_dim(attn.to_q(args[0])).double()
            k = attn.head_to_batch_dim(attn.to_k(kwargs["encoder_hidden_states"][0])).double()  # (text, [image])
            p = (q @ k.transpose(1, 2) * attn.scale).softmax(-1).view(-1, attn.heads, q.shape[1], k.shape[1])
            records.append((f, p[-len(PROMPTS):].mean(1)))
        handles.append(unet.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        plain = pipe([p.text for p in PROMPTS], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
    finally:
        for h in handles:
            h.remove()
    assert np.array_equal(np.stack(out.images), plain.images)
    index = gen.store.token_index
    for f, got in gen.store.token_maps().items():
        probs = torch.stack([p for g, p in records if g == f]).mean(0)  # (b, N, 77)
        expected = torch.stack([probs[b][:, index[b]].T for b in range(len(PROMPTS))])
        torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-5, atol=1e-7)
