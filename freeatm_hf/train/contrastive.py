"""freeatm train simclr|moco: instance-level contrastive pretraining with free attention masks.

    freeatm train simclr --dataset outputs/scenes --output_dir outputs/simclr-atm --backbone resnet50 ...
    freeatm train moco recipes/moco_atm.yaml
    accelerate launch -m freeatm_hf.train moco recipes/moco_atm.yaml
"""

import functools
import logging
from dataclasses import dataclass, field

import torch

from ..data.rows import rgb
from .arguments import DataArguments, check_carded_settings, check_views, fit_and_save, resume_point

logger = logging.getLogger(__name__)


@dataclass
class ContrastiveArguments(DataArguments):
    backbone: str = field(default="resnet50", metadata={"help": "Any timm CNN."})
    pooling: str = field(default="attention", metadata={"help": "attention (Free-ATM) or image (baseline)."})
    image_size: int = field(default=224, metadata={"help": "View side."})
    crop_scale_min: float = field(default=0.2, metadata={"help": "RandomResizedCrop scale lower bound."})
    mask_threshold: float | None = field(default=None, metadata={
        "help": "Threshold of the normalized attention maps (default: the one the dataset's card states, the one "
                "its boxes use; else 0.4)."})
    mask_mode: str = field(default="binary", metadata={"help": "binary or soft masks for pooling."})
    min_visible: float = field(default=0.1, metadata={"help": "Keep an instance if this share of it is in both crops."})
    proj_hidden_dim: int = field(default=2048, metadata={"help": "Projection head hidden size."})
    proj_dim: int = field(default=128, metadata={"help": "Projection output size."})
    nce_temperature: float | None = field(default=None, metadata={"help": "Default 0.1 (SimCLR), 0.2 (MoCo)."})
    queue_size: int = field(default=65536, metadata={"help": "MoCo queue length (instances)."})
    momentum: float = field(default=0.999, metadata={"help": "MoCo key-encoder EMA momentum."})
    color_strength: float | None = field(default=None, metadata={
        "help": "Colour jitter strength s: brightness, contrast, saturation 0.8·s, hue 0.2·s, at p 0.8 (default: "
                "1.0 for SimCLR, its paper's setting; 0.5 for MoCo-v2, whose jitter is (0.4, 0.4, 0.4, 0.1))."})
    optimizer: str | None = field(default=None, metadata={
        "help": "lars (SimCLR default), sgd (MoCo default) or adamw (with --adam_beta1/2, --adam_epsilon); "
                "Trainer's --optim does not apply."})
    gpu_photometric: bool = field(default=True, metadata={
        "help": "Colour jitter / grayscale / blur batched on the training device (per-sample parameters) instead of "
                "per image in the data workers; geometry stays in the workers, applied to image and masks alike, "
                "whose views then travel as uint8 (binary masks as bool), a quarter of the bytes."})
    lr_milestones: list[int] = field(default_factory=list, metadata={
        "help": "Epochs at which the LR is multiplied by 0.1, with --lr_scheduler_type constant (MoCo-v1's step "
                "schedule: 120 160 of 200; MoCo-v2 uses cosine)."})

    def data_info(self, ds) -> dict:
        # The augmentation a reader cannot infer from the method's name once it is not the paper's.
        # The input size too: a timm export states it as the model's data config.
        return {**super().data_info(ds), "color_strength": self.color_strength, "image_size": self.image_size}

    def __post_init__(self):
        super().__post_init__()
        if self.color_strength is not None and not 0.0 <= self.color_strength <= 1.25:
            # Past 1.25 the low brightness, contrast and saturation factor 1 − 0.8·s would be negative.
            raise ValueError(f"--color_strength must be in [0, 1.25], got {self.color_strength}")
        if self.mask_threshold is not None and not 0.0 <= self.mask_threshold < 1.0:
            raise ValueError(f"--mask_threshold applies to maps normalized to [0, 1]: it must be in [0, 1), got "
                             f"{self.mask_threshold}")
        if self.nce_temperature is not None and not self.nce_temperature > 0:
            # 0 would divide by zero (and was silently replaced by the default); below 0 the loss pushes
            # positives apart.
            raise ValueError(f"--nce_temperature must be > 0, got {self.nce_temperature}")
        if self.queue_size < 1:
            raise ValueError(f"--queue_size must be at least 1, got {self.queue_size}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            # An empty name fell back to the method's own without a word; another failed after the data loaded.
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if any(m < 1 for m in self.lr_milestones):  # epoch 0 cut the rate tenfold for the whole run
            raise ValueError(f"--lr_milestones are epochs, at least 1, got {self.lr_milestones}")
        if self.proj_dim < 1 or self.proj_hidden_dim < 1:
            # A 0-wide projection trained nothing (zero gradients) and still saved a model and its card.
            raise ValueError(f"--proj_dim and --proj_hidden_dim must be at least 1, got {self.proj_dim} and "
                             f"{self.proj_hidden_dim}")
        check_views(self.image_size, self.crop_scale_min)
        if self.mask_mode not in ("binary", "soft"):
            # Else found by the data workers at the first batch, and said as a damaged row of the dataset.
            raise ValueError(f"--mask_mode must be binary or soft, got {self.mask_mode!r}")
        if not 0.0 <= self.min_visible <= 1.0:
            # Above 1 no instance is ever kept in both crops: every step would contribute no loss.
            raise ValueError(f"--min_visible is a share of each mask, in [0, 1]; got {self.min_visible}")
        from ..models.encoder import check_cnn_backbone

        check_cnn_backbone(self.backbone)  # before the data is read, not at the first batch


# Colour jitter strength s of each method's paper (SimCLR's s; MoCo-v2's jitter is SimCLR's at s = 0.5).
COLOR_STRENGTH = {"simclr": 1.0, "moco": 0.5}
OPTIMIZERS = ("lars", "sgd", "adamw")  # what build_optimizer builds
OPTIMIZER = {"simclr": "lars", "moco": "sgd"}  # each method's own, when --optimizer is not given


def build_model(method: str, args: ContrastiveArguments):
    from ..models import MoCoConfig, MoCoModel, SimCLRConfig, SimCLRModel

    common = dict(backbone=args.backbone, pooling=args.pooling, proj_hidden_dim=args.proj_hidden_dim,
                  proj_dim=args.proj_dim)
    # `is None`, not `or`: a temperature of 0 is refused by the arguments, not replaced by the default.
    temperature = args.nce_temperature
    if method == "simclr":
        return SimCLRModel(SimCLRConfig(**common, nce_temperature=0.1 if temperature is None else temperature))
    if method == "moco":
        return MoCoModel(MoCoConfig(**common, queue_size=args.queue_size, momentum=args.momentum,
                                    nce_temperature=0.2 if temperature is None else temperature))
    raise ValueError(f"unknown method {method!r}")


def epoch_keys(ds, pooling: str) -> int | None:
    """At most how many instance keys an epoch of `ds` makes: one per row pooled whole, else one per object (a row
    without an objects column, a real image, is one). None for a stream. Read from the list offsets alone."""
    from datasets import IterableDataset

    if isinstance(ds, IterableDataset):
        return None
    if pooling == "image" or "objects" not in ds.column_names:
        return len(ds)
    import pyarrow.compute as pc

    lengths = pc.list_value_length(ds.data.column("objects")).fill_null(0)
    if ds._indices is not None:  # a selection or shuffle of the table's rows (the mix)
        lengths = lengths.take(ds._indices.column(0))
    return int(pc.sum(pc.max_element_wise(lengths, 1)).as_py() or 0)


def check_queue_size(queue_size: int, ds, pooling: str):
    """Warn when MoCo's queue is longer than an epoch's keys: it then always holds an earlier key of the very
    instance a query is of, as a negative (MoCo's 65536 keys are 5 % of ImageNet's 1.28M)."""
    keys = epoch_keys(ds, pooling)
    if keys is not None and queue_size > keys:
        logger.warning("--queue_size %d is more than the %d instance keys an epoch of this dataset makes at most: the "
                       "queue will hold earlier keys of each query's own instance as negatives; give --queue_size "
                       "%d or less (MoCo's 65536 are 5 %% of ImageNet's keys)", queue_size, keys, max(1, keys // 10))


def build_optimizer(model, name: str, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
    """LARS/SGD/AdamW. With LARS and AdamW batch-norm parameters and biases get no weight decay (and no LARS
    adaptation), as SimCLR does; SGD decays every parameter, as MoCo's code does."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and name != "sgd" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=0.9)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}")


def make_transform(args: ContrastiveArguments):
    from ..data.transforms import TwoViewTransform
    from ..masks import DEFAULT_THRESHOLD

    on_device = args.gpu_photometric
    # The baseline pools no masks: its views carry one whole-image mask each, not every object's map cropped twice
    # (work its data workers did for nothing), and it reads no threshold or peak cut it would then not apply.
    masked = args.pooling == "attention"
    # Real rows carry one whole-image mask and no maps: `dataset` (a recipe's, kept under --data_mode real) is not
    # read, so its card is not either (a folder not generated yet was looked up on the Hub, with retries).
    if masked and args.mask_threshold is None and args.data_mode != "real":
        from ..data.reading import dataset_threshold

        args.mask_threshold = dataset_threshold(args.dataset)
        logger.info("mask threshold %s (from %s's card)", args.mask_threshold, args.dataset)
    min_peak = args.resolve_min_attention_peak() if masked else None
    threshold = args.mask_threshold if masked and args.mask_threshold is not None else DEFAULT_THRESHOLD  # (no map)
    two = TwoViewTransform(size=args.image_size, scale=(args.crop_scale_min, 1.0), min_visible=args.min_visible,
                           photometric=not on_device, normalize=not on_device, color_strength=args.color_strength,
                           uint8_views=on_device, bool_masks=on_device and args.mask_mode == "binary")
    # A partial of a module-level function, not a closure: data workers started by spawn or forkserver (macOS,
    # Windows, Python 3.14 on Linux) get the dataset, transform included, by pickling.
    return functools.partial(_two_views, two=two, masked=masked, min_peak=min_peak, threshold=threshold,
                             mask_mode=args.mask_mode)


def _two_views(batch: dict, two, masked: bool, min_peak: float | None, threshold, mask_mode: str) -> dict:
    from ..data.masks import MapMasks, drawn_objects

    out = {k: [] for k in ("pixel_values_1", "pixel_values_2", "masks_1", "masks_2")}
    for image, objects in zip(batch["image"], batch["objects"]):
        image = rgb(image)
        masks = MapMasks(drawn_objects(objects, min_peak) if masked else [], (image.height, image.width),
                         threshold, mask_mode)
        views = two(image, masks)
        for k in out:
            out[k].append(views[k])
    return out


def check_optim_unset(training_args):
    """SimCLR and MoCo pass Trainer their own optimizer (LARS/SGD without decay on BN and biases), which makes
    Trainer ignore `--optim` without a word: refuse it instead."""
    from transformers import TrainingArguments

    name = lambda o: str(getattr(o, "value", o))  # noqa: E731  (an OptimizerNames member, or its string)
    if name(training_args.optim) != name(TrainingArguments.__dataclass_fields__["optim"].default):
        raise ValueError(f"--optim {name(training_args.optim)} does not apply to SimCLR/MoCo: use --optimizer "
                         "lars|sgd|adamw")


def check_milestones(args, training_args):
    """The milestones set the learning rate at each epoch's start: any other schedule (cosine, warm-up) would be
    overridden for that step and compounded with the steps."""
    scheduler = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
    if args.lr_milestones and scheduler != "constant":
        raise ValueError(f"--lr_milestones is a step schedule of its own: use it with --lr_scheduler_type constant, "
                         f"not {scheduler}")


def read_stream_per_process(training_args):
    """Each process reads its own part of a streamed dataset. accelerate's default for a stream is to read it on
    the main process and concatenate one batch per process, which fails here: a batch pads its instance masks to
    its own largest count. Without dispatching accelerate splits the stream itself (by files when there are
    enough, else every process keeps its slice of each global batch): no row read twice nor skipped."""
    config = training_args.accelerator_config
    if config.dispatch_batches:
        raise ValueError("--streaming cannot dispatch batches from the main process (dispatch_batches in "
                         "--accelerator_config): batches hold different numbers of instances; leave it unset")
    config.dispatch_batches = False


def train(method: str, args: ContrastiveArguments, training_args):

    from ..data.collate import collate_two_views
    from .callbacks import LRMilestonesCallback, MomentumUpdateCallback
    from .trainer import ContrastiveTrainer

    check_optim_unset(training_args)
    resume = resume_point(training_args)  # a refused resume is said before any data is read
    # As the card records them (`training_info`).
    check_carded_settings(resume, optimizer=args.optimizer or OPTIMIZER[method],
                          lr_milestones=sorted(args.lr_milestones) or None)
    check_milestones(args, training_args)
    from transformers import set_seed

    set_seed(training_args.seed)  # the initial weights are part of the experiment
    model = build_model(method, args)  # first: an unknown method fails before any data is read
    if args.color_strength is None:
        args.color_strength = COLOR_STRENGTH[method]
    ds = args.load(seed=training_args.seed)
    if method == "moco":
        check_queue_size(args.queue_size, ds, args.pooling)
    transform = make_transform(args)
    if args.streaming:
        read_stream_per_process(training_args)
    ds = args.read_through(ds, transform)
    if training_args.world_size > 1 and training_args.device.type == "cuda":
        # Global batch norm (SimCLR's, and MoCo's answer to BN leakage); it also normalises a process whose
        # batch holds a single instance. torch's SyncBatchNorm runs on GPUs only.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt_name = args.optimizer or OPTIMIZER[method]
    optimizer = build_optimizer(model, opt_name, training_args.learning_rate, training_args.weight_decay,
                                betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon)
    callbacks = []
    if method == "moco":
        callbacks.append(MomentumUpdateCallback())
    if args.lr_milestones:
        callbacks.append(LRMilestonesCallback(args.lr_milestones))
    training_args.remove_unused_columns = False
    trainer = ContrastiveTrainer(model=model, args=training_args, train_dataset=ds, data_collator=collate_two_views,
                                   optimizers=(optimizer, None), callbacks=callbacks,
                                   gpu_photometric=args.gpu_photometric, image_size=args.image_size,
                                   color_strength=args.color_strength)
    return fit_and_save(trainer, args, ds, training_args, resume, optimizer=opt_name, lr_milestones=args.lr_milestones)

