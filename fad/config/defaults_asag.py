"""Config keys of ASAG (merged into the defaults by fad.config.build; docs/asag.md)."""
from yacs.config import CfgNode as CN


def add_asag_config(cfg: CN) -> None:
    """Add the ASAG keys (`MODEL.ASAG.*`) to `cfg` in place."""
    a = cfg.MODEL.ASAG = CN()
    # architecture
    a.NUM_QUERIES = 100  # query setting 100 or 300 (anchors per patch, thresholds, min/max)
    a.DECODER = "adamixer"  # one-layer decoder: adamixer (ASAG-A) or sparsercnn (ASAG-S)
    a.NUM_DECODER_HEADS = 4  # parallel one-layer heads (1 = only the used one, for speed)
    a.USED_HEAD = "main"  # head evaluated: main (the last) or aux_k (head k)
    a.USED_INFERENCE_LEVEL = "P3P6"  # levels probed: P3P6 (P4 + P3), P4P6 (P4), P5P6 (none)
    a.FAST_INFERENCE = False  # batch-1 anchor path computing only the probed levels (same output)
    a.HIDDEN_DIM = 256  # FPN width = query width D
    a.NHEADS = 8  # self-attention heads (RelationBlock and decoder heads)
    a.DIM_FEEDFORWARD = 2048  # FFN hidden width
    a.COMPRESS_DIM = 8  # anchor generator: channels of the compressed P3-P5 maps
    a.ANCHOR_HIDDEN_DIM = 1000  # anchor generator: MLP hidden width
    a.USE_TARGET_EPOCH = 1  # anchor generator: epochs (from 0) probing ground-truth patches
    a.MAX_PATCHES_PER_LEVEL = 0  # anchor generator: cap on patches per image and level (0 = none)
    a.GROUPS = 4  # AdaMixer: sampling groups
    a.IN_POINTS = 32  # AdaMixer: sampling points per group
    a.OUT_POINTS = 128  # AdaMixer: points after spatial mixing
    a.DYNAMIC_DIM = 64  # SparseRCNN: DynamicConv inner width
    # denoising (ASAG-A-dn)
    a.USE_DN = False  # add noised ground-truth queries in training
    a.NUM_DN = 200  # denoising queries per image
    a.FIX_NOISE_SCALE = False  # True: box noise NOISE_SCALE; False: 0.8 - 0.04 * epoch
    a.NOISE_SCALE = 0.4  # box noise scale with FIX_NOISE_SCALE
    # matching and losses
    a.SET_COST_CLASS = 2.0  # matcher weight of the focal class cost
    a.SET_COST_BBOX = 5.0  # matcher weight of the L1 box cost
    a.SET_COST_GIOU = 2.0  # matcher weight of the -GIoU cost
    a.AREA_WEIGHT = 4.0  # small-object weight: area_weight - (area_weight - 1) * sqrt(w h)
    a.CLS_LOSS_COEF = 2.0  # proposals / heads / DN: dual-weighting focal loss weight
    a.BBOX_LOSS_COEF = 5.0  # proposals / heads / DN: L1 weight
    a.GIOU_LOSS_COEF = 2.0  # proposals / heads / DN: GIoU weight
    a.ANCHOR_LOSS_COEF = 4.0  # anchor losses: cls 2x, L1 1x, GIoU 0.5x this
    a.GAMMA1 = 0.4  # dual weighting: exponent of the class probability
    a.GAMMA2 = 0.6  # dual weighting: exponent of the IoU
    a.REFERENCE_FLIP_BUG = False  # True: P6 flip targets as the reference (xyxy flip on cxcywh)
    # inference and optimiser
    a.DETECTIONS_PER_IMG = 100  # top (query, class) pairs kept per image
    a.NMS_THRESH = 0.0  # class-wise NMS IoU after the top-k (0 = none; 300 queries: 0.7)
    a.LR_BACKBONE = 2e-5  # learning rate of the backbone body (the rest: SOLVER.BASE_LR)
