import pytest
from transformers import TrainingArguments, set_seed

from freeatm_hf.train.mae import MAEArguments, build_model, train


def test_a_few_cpu_trainer_steps_reduce_the_loss_and_log_beta(tmp_path, shapes_data):
    import torch

    args = MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8, crop_scale_min=0.5)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=10,
                              learning_rate=2e-3, logging_steps=1, save_strategy="no", report_to="none",
                              use_cpu=True, seed=0)
    set_seed(0)
    init = {n: p.detach().clone() for n, p in build_model(args).named_parameters()}
    trainer = train(args, targs)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8
    # Linear in the optimizer step, from 0 at the first to 0.8 at the last (logged after each step).
    assert [h["beta"] for h in logs] == pytest.approx([0.8 * k / 39 for k in range(40)])
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), init[n])]
    assert len(moved) >= 0.9 * len(init)


def test_the_mask_free_baseline_is_recorded_as_unguided(shapes_data):
    from freeatm_hf.hub.model_card import _guided

    guided = build_model(MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8))
    baseline = build_model(MAEArguments(dataset=shapes_data, model_size="tiny", image_size=32, patch_size=8,
                                        guided=False))
    assert guided.config.beta_max == 0.8 and _guided(guided.config)
    # A baseline checkpoint must not claim attention-guided masking in its config, tags or card.
    assert baseline.config.beta_max == 0.0 and not _guided(baseline.config)
