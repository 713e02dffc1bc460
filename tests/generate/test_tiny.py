"""Tiny pipelines built in code: deterministic in their seed, at the image size asked."""

import torch


def test_a_tiny_pipeline_is_a_function_of_its_seed_and_leaves_the_global_rng_alone(tiny_pipe):
    from freeatm_hf.generate.tiny import tiny_pipeline

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = tiny_pipeline(seed=0)
    assert torch.equal(torch.rand(4), expected)  # building it drew nothing from the caller's generator
    b, c = tiny_pipe, tiny_pipeline(seed=1)  # the session's tiny_pipeline(), seed 0
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa), name


def test_a_tiny_pipeline_draws_at_the_image_size_asked_by_default():
    from freeatm_hf.generate.tiny import tiny_pipeline

    for size in (32, 64):
        pipe = tiny_pipeline(image_size=size)
        assert pipe.unet.config.sample_size * pipe.vae_scale_factor == size
