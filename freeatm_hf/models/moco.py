"""MoCo-v2 with attention-pooled instance features: the key encoder's instance features fill the queue.

The head has no batch norm (MoCo-v2's). The backbone's batch norm runs over images (instances are pooled after
it), where MoCo's shuffle-BN would apply: the key images permuted across processes before the key encoder and
put back after it, so that query and key are normalised over different sub-batches and BN statistics cannot
leak which key is the positive. It is not implemented (it needs equal batches on every process, and one process
would need split BN): on several GPUs the training entry uses SyncBatchNorm, which keeps the statistics global
but does not by itself stop that leakage. A known deviation.
"""

import copy

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

from .encoder import POOLINGS, create_backbone, instance_features, paired_instances
from .losses import global_count, moco_info_nce
from .momentum import MomentumWatch, ema_update_, enqueue_
from .simclr import ContrastiveOutput, skipped_step


class MoCoConfig(PretrainedConfig):
    """Args (MoCo-v2 defaults):
    backbone (`str`, defaults to `"resnet50"`), pooling (`"attention"` | `"image"`),
    proj_hidden_dim / proj_dim (2048 / 128), queue_size (65536), momentum (0.999), nce_temperature (0.2).
    """

    model_type = "freeatm_moco"

    def __init__(self, backbone: str = "resnet50", pooling: str = "attention", proj_hidden_dim: int = 2048,
                 proj_dim: int = 128, queue_size: int = 65536, momentum: float = 0.999, nce_temperature: float = 0.2,
                 **kwargs):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not nce_temperature > 0:
            raise ValueError(f"nce_temperature must be > 0, got {nce_temperature}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.backbone, self.pooling = backbone, pooling
        self.proj_hidden_dim, self.proj_dim = proj_hidden_dim, proj_dim
        self.queue_size, self.momentum, self.nce_temperature = queue_size, momentum, nce_temperature
        super().__init__(**kwargs)


class MoCoModel(MomentumWatch, PreTrainedModel):
    """MoCo-v2 on object instances. The key encoder moves only through `momentum_update()`, after each optimizer
    step: with a plain `Trainer`, add `freeatm_hf.train.callbacks.MomentumUpdateCallback()` (`freeatm train moco`
    does), or the keys come from the starting weights all run (a warning says so after a few steps)."""

    config_class = MoCoConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values_1"
    accepts_loss_kwargs = False  # a mean already (see SimCLRModel)

    def __init__(self, config: MoCoConfig):
        super().__init__(config)
        self.backbone = create_backbone(config.backbone)
        # MoCo-v2's head: 2-layer MLP without BN (BN in the head would leak across the batch too).
        self.head = torch.nn.Sequential(torch.nn.Linear(self.backbone.num_features, config.proj_hidden_dim),
                                        torch.nn.ReLU(inplace=True),
                                        torch.nn.Linear(config.proj_hidden_dim, config.proj_dim))
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.proj_dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.post_init()

    def _init_weights(self, module):
        pass

    def query_modules(self):
        return [self.backbone, self.head]

    def key_modules(self):
        return [self.key_backbone, self.key_head]

    def momentum_update(self, momentum: float | None = None):
        """key ← m·key + (1−m)·query, parameters and buffers (BN statistics) alike."""
        self._note_moved()
        ema_update_(zip(self.query_modules(), self.key_modules()),
                    self.config.momentum if momentum is None else momentum)

    def enqueue(self, keys: torch.Tensor):
        """Write keys (gathered from every process) into the ring buffer; any count, wrapping around."""
        enqueue_([self.queue], self.queue_ptr, [F.normalize(keys.float(), dim=-1)])

    def forward(self, pixel_values_1, pixel_values_2, masks_1=None, masks_2=None, instance_valid=None,
                return_loss: bool = True, **kwargs) -> ContrastiveOutput:
        self._note_training_forward("MomentumUpdateCallback()")
        pooling = self.config.pooling
        if pooling == "attention":
            instance_valid = paired_instances(masks_1, masks_2, instance_valid)
        fq = instance_features(self.backbone, pixel_values_1, masks_1, instance_valid, pooling)
        # Decided on the global count: a process with few (even no) instances still runs the SyncBatchNorm and
        # queue collectives the others run. One instance is enough: its negatives are the queue, and the head
        # has no batch norm.
        total = global_count(len(fq), fq.device) if self.training else len(fq)
        if self.training and total < 1:
            return skipped_step(fq, modules=[self.head])
        q = self.head(fq)
        with torch.no_grad():
            k = self.key_head(instance_features(self.key_backbone, pixel_values_2, masks_2, instance_valid, pooling))
        loss = (moco_info_nce(q, k, self.queue.clone(), self.config.nce_temperature,
                              total=total if self.training else None) if return_loss else None)
        if self.training:
            self.enqueue(k)
        return ContrastiveOutput(loss=loss, embeddings_1=q, embeddings_2=k, num_instances=len(q))
