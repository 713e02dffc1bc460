"""The momentum encoders' watch: a model trained without the callback that moves them says so, once."""

import logging

import pytest
import torch

from freeatm_hf.models import momentum
from freeatm_hf.models.moco import MoCoConfig, MoCoModel
from tests.models.test_blip import tiny as tiny_blip
from tests.models.test_contrastive import SMALL


def moco_step(model):
    model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))


def blip_step(model):
    ids = torch.randint(4, 120, (2, 9))
    model(torch.randn(2, 3, 32, 32), ids, torch.ones_like(ids))


@pytest.mark.parametrize("make, step, callbacks", [
    (lambda: MoCoModel(MoCoConfig(**SMALL, pooling="image", queue_size=8)), moco_step, "MomentumUpdateCallback()"),
    (lambda: tiny_blip(momentum_distill=True, queue_size=8), blip_step, "DistillAlphaCallback()")])
def test_training_forwards_whose_momentum_encoders_never_move_are_warned_about_once(monkeypatch, caplog, make, step,
                                                                                    callbacks):
    """A plain Trainer without the callback left MoCo's key encoder (half the weights) at its start, silently."""
    monkeypatch.setattr(momentum, "UNMOVED_AFTER", 3)
    name = "freeatm_hf.models.momentum"
    unmoved = make().train()
    with caplog.at_level(logging.WARNING, logger=name):
        for _ in range(5):
            step(unmoved)
    said = [r.getMessage() for r in caplog.records if r.name == name]
    assert len(said) == 1 and "trained 3 forwards" in said[0] and callbacks in said[0]
    caplog.clear()
    moved, evaluated = make().train(), make().eval()
    with caplog.at_level(logging.WARNING, logger=name):
        for _ in range(5):
            step(moved)
            moved.momentum_update()  # as the callback does after each optimizer step
            step(evaluated)  # evaluation moves nothing, and needs nothing moved
    assert not [r for r in caplog.records if r.name == name]


def test_blip_without_momentum_encoders_has_nothing_to_move(monkeypatch, caplog):
    monkeypatch.setattr(momentum, "UNMOVED_AFTER", 2)
    model = tiny_blip().train()
    with caplog.at_level(logging.WARNING, logger="freeatm_hf.models.momentum"):
        for _ in range(3):
            blip_step(model)
    assert not caplog.records
