"""SimCLR with attention-pooled instance features (Free-ATM §3.3.1), or the image-level baseline."""

import logging
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .encoder import POOLINGS, create_backbone, instance_features, paired_instances, projection_head
from .losses import instance_nt_xent, process_counts

logger = logging.getLogger(__name__)


class SimCLRConfig(PretrainedConfig):
    """Args:
    backbone (`str`, defaults to `"resnet50"`): any timm CNN.
    pooling (`str`, defaults to `"attention"`): `"attention"` (Free-ATM: one feature per object mask) or
        `"image"` (SimCLR: one per image).
    proj_hidden_dim / proj_dim (`int`, defaults to 2048 / 128), proj_layers (defaults to 2): SimCLR's head.
    nce_temperature (`float`, defaults to 0.1): the InfoNCE temperature (`temperature` is a generation
        parameter to transformers).
    """

    model_type = "freeatm_simclr"

    def __init__(self, backbone: str = "resnet50", pooling: str = "attention", proj_hidden_dim: int = 2048,
                 proj_dim: int = 128, proj_layers: int = 2, nce_temperature: float = 0.1, **kwargs):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not nce_temperature > 0:
            raise ValueError(f"nce_temperature must be > 0, got {nce_temperature}")
        self.backbone, self.pooling = backbone, pooling
        self.proj_hidden_dim, self.proj_dim, self.proj_layers = proj_hidden_dim, proj_dim, proj_layers
        self.nce_temperature = nce_temperature
        super().__init__(**kwargs)


@dataclass
class ContrastiveOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    embeddings_1: torch.FloatTensor | None = None
    embeddings_2: torch.FloatTensor | None = None
    num_instances: int | None = None


class SimCLRModel(PreTrainedModel):
    config_class = SimCLRConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values_1"
    # The loss is a mean already. Taking `**kwargs`, the model would pass for one that takes Trainer's
    # `num_items_in_batch`: a batch with `labels` (what `default_data_collator` makes of a dataset's `label`)
    # would have Trainer leave the loss undivided by the gradient accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: SimCLRConfig):
        super().__init__(config)
        self.backbone = create_backbone(config.backbone)
        self.head = projection_head(self.backbone.num_features, config.proj_hidden_dim, config.proj_dim,
                                    config.proj_layers)
        self.post_init()

    def _init_weights(self, module):
        pass  # timm and torch initialize their own modules; keep them

    def embed(self, pixel_values, masks=None, instance_valid=None):
        """Projected features: one per image (mask-free pooling or no `masks`), else one per instance of `masks`
        `(B, K, H, W)` that `instance_valid` `(B, K)` keeps; without it every slot, a batch's all-zero padding too."""
        return self.head(instance_features(self.backbone, pixel_values, masks, instance_valid, self.config.pooling))

    def forward(self, pixel_values_1, pixel_values_2, masks_1=None, masks_2=None, instance_valid=None,
                return_loss: bool = True, **kwargs) -> ContrastiveOutput:
        pooling = self.config.pooling
        if pooling == "attention":
            instance_valid = paired_instances(masks_1, masks_2, instance_valid)
        f1 = instance_features(self.backbone, pixel_values_1, masks_1, instance_valid, pooling)
        f2 = instance_features(self.backbone, pixel_values_2, masks_2, instance_valid, pooling)
        # Decided on every process's count, so that all take the same path through the collectives. The head's
        # batch norm normalises over the global batch when synchronised (on GPUs), else over the local one, which
        # needs two instances in every process.
        counts = None
        if self.training:
            counts = process_counts(len(f1), f1.device)
            local_bn = len(counts) > 1 and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.head.modules())
            if sum(counts) < 2 or (local_bn and min(counts) < 2):
                return skipped_step(f1, f2, modules=[self.head])
        z1, z2 = self.head(f1), self.head(f2)
        loss = (instance_nt_xent(z1, z2, self.config.nce_temperature, gather=self.training, counts=counts)
                if return_loss else None)
        return ContrastiveOutput(loss=loss, embeddings_1=z1, embeddings_2=z2, num_instances=len(z1))


def skipped_step(*features, modules=()) -> ContrastiveOutput:
    """A batch left with fewer than two instances (a tiny last batch, every other object cropped away): no
    negatives to contrast, and the head's batch norm cannot normalise one sample. A zero loss that keeps the
    graph through the features and the skipped `modules` (DDP expects a gradient for every parameter), so
    Trainer steps on without a crash."""
    logger.warning("a batch with too few instances to contrast contributes no loss")
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    zero = sum(f.sum() for f in features) * 0.0 + sum(p.sum() for p in params) * 0.0
    return ContrastiveOutput(loss=zero, num_instances=len(features[0]))
