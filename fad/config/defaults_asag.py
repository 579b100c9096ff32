"""Config keys of ASAG (merged into the defaults by fad.config.build; docs/asag.md)."""
from .rules import Node as CN
from .rules import at_least, choice, non_negative, pattern, positive, probability


def add_asag_config(cfg: CN) -> None:
    """Add the ASAG keys (`MODEL.ASAG.*`) to `cfg` in place."""
    a = cfg.MODEL.ASAG = CN()
    # architecture
    # query setting 100 or 300 (anchors per patch, thresholds, min/max)
    a.NUM_QUERIES = choice(100, (100, 300))
    # one-layer decoder: adamixer (ASAG-A) or sparsercnn (ASAG-S)
    a.DECODER = choice("adamixer", ("adamixer", "sparsercnn"))
    a.NUM_DECODER_HEADS = positive(4)  # parallel one-layer heads (1 = only the used one, for speed)
    # head evaluated: main (the last) or aux_k (head k)
    a.USED_HEAD = pattern("main", r"main|aux_\d+", "main, aux_K", ("main",))
    # levels probed: P3P6 (P4 + P3), P4P6 (P4), P5P6 (none)
    a.USED_INFERENCE_LEVEL = choice("P3P6", ("P3P6", "P4P6", "P5P6"))
    a.FAST_INFERENCE = False  # batch-1 anchor path computing only the probed levels (same output)
    a.HIDDEN_DIM = positive(256)  # FPN width = query width D
    a.NHEADS = positive(8)  # self-attention heads (RelationBlock and decoder heads)
    a.DIM_FEEDFORWARD = positive(2048)  # FFN hidden width
    a.COMPRESS_DIM = positive(8)  # anchor generator: channels of the compressed P3-P5 maps
    a.ANCHOR_HIDDEN_DIM = positive(1000)  # anchor generator: MLP hidden width
    # anchor generator: epochs (from 0) probing ground-truth patches
    a.USE_TARGET_EPOCH = non_negative(1)
    # anchor generator: cap on patches per image and level (0 = none)
    a.MAX_PATCHES_PER_LEVEL = non_negative(0)
    a.GROUPS = positive(4)  # AdaMixer: sampling groups
    a.IN_POINTS = positive(32)  # AdaMixer: sampling points per group
    a.OUT_POINTS = positive(128)  # AdaMixer: points after spatial mixing
    a.DYNAMIC_DIM = positive(64)  # SparseRCNN: DynamicConv inner width
    # denoising (ASAG-A-dn)
    a.USE_DN = False  # add noised ground-truth queries in training
    a.NUM_DN = positive(200)  # denoising queries per image
    a.FIX_NOISE_SCALE = False  # True: box noise NOISE_SCALE; False: 0.8 - 0.04 * epoch
    a.NOISE_SCALE = non_negative(0.4)  # box noise scale with FIX_NOISE_SCALE
    # matching and losses
    a.SET_COST_CLASS = non_negative(2.0)  # matcher weight of the focal class cost
    a.SET_COST_BBOX = non_negative(5.0)  # matcher weight of the L1 box cost
    a.SET_COST_GIOU = non_negative(2.0)  # matcher weight of the -GIoU cost
    # small-object weight: area_weight - (area_weight - 1) * sqrt(w h)
    a.AREA_WEIGHT = at_least(4.0, 1)
    a.CLS_LOSS_COEF = non_negative(2.0)  # proposals / heads / DN: dual-weighting focal loss weight
    a.BBOX_LOSS_COEF = non_negative(5.0)  # proposals / heads / DN: L1 weight
    a.GIOU_LOSS_COEF = non_negative(2.0)  # proposals / heads / DN: GIoU weight
    a.ANCHOR_LOSS_COEF = non_negative(4.0)  # anchor losses: cls 2x, L1 1x, GIoU 0.5x this
    a.GAMMA1 = non_negative(0.4)  # dual weighting: exponent of the class probability
    a.GAMMA2 = non_negative(0.6)  # dual weighting: exponent of the IoU
    a.REFERENCE_FLIP_BUG = False  # True: P6 flip targets as the reference (xyxy flip on cxcywh)
    # inference and optimiser
    a.DETECTIONS_PER_IMG = positive(100)  # top (query, class) pairs kept per image
    # class-wise NMS IoU after the top-k (0 = none; 300 queries: 0.7)
    a.NMS_THRESH = probability(0.0)
    # learning rate of the backbone body (the rest: SOLVER.BASE_LR)
    a.LR_BACKBONE = non_negative(2e-5)
