"""Config keys of Deformable DETR and Sparse DETR (merged into the defaults by fad.config.build)."""
from .rules import Node as CN
from .rules import in_range, non_negative, positive, probability


def add_detr_config(cfg: CN) -> None:
    """Add the Deformable DETR and Sparse DETR keys (`MODEL.DETR.*`) to `cfg` in place."""
    d = cfg.MODEL.DETR = CN()
    # transformer
    d.D_MODEL = positive(256)  # transformer width C (input projections, encoder, decoder)
    d.NHEADS = positive(8)  # attention heads M (MSDA and decoder self-attention)
    d.ENC_LAYERS = positive(6)  # encoder layers
    d.DEC_LAYERS = positive(6)  # decoder layers
    d.DIM_FEEDFORWARD = positive(1024)  # FFN hidden width
    d.DROPOUT = in_range(0.1, 0, 1, high_open=True)  # dropout in attention and FFN
    # levels: C3-C5 (last ones if fewer) + stride-2 convs beyond 3
    d.NUM_FEATURE_LEVELS = positive(4)
    d.ENC_N_POINTS = positive(4)  # MSDA sampling points per head and level in the encoder
    d.DEC_N_POINTS = positive(4)  # MSDA sampling points per head and level in the decoder
    d.GN_GROUPS = positive(32)  # GroupNorm groups of the input projections (must divide D_MODEL)
    d.NUM_QUERIES = positive(300)  # object queries (two-stage: proposals kept after the encoder)
    d.WITH_BOX_REFINE = False  # iterative box refinement: per-layer heads refine the references
    d.TWO_STAGE = False  # encoder proposals (top NUM_QUERIES by objectness) seed the decoder
    d.AUX_LOSS = True  # losses on every intermediate decoder layer
    # matching and losses
    d.SET_COST_CLASS = non_negative(2.0)  # matcher weight of the focal class cost
    d.SET_COST_BBOX = non_negative(5.0)  # matcher weight of the L1 box cost (normalised cxcywh)
    d.SET_COST_GIOU = non_negative(2.0)  # matcher weight of the -GIoU cost
    d.CLS_LOSS_COEF = non_negative(2.0)  # weight of the sigmoid focal classification loss
    d.BBOX_LOSS_COEF = non_negative(5.0)  # weight of the L1 box loss
    d.GIOU_LOSS_COEF = non_negative(2.0)  # weight of the GIoU loss
    d.FOCAL_ALPHA = probability(0.25)  # focal loss alpha (loss and matcher)
    d.FOCAL_GAMMA = non_negative(2.0)  # focal loss gamma (loss and matcher)
    d.DETECTIONS_PER_IMG = positive(100)  # inference: top (query, class) pairs kept per image
    # optimiser groups (SOLVER.OPTIMIZER AdamW, SOLVER.BASE_LR for the rest)
    d.LR_BACKBONE = non_negative(2e-5)  # learning rate of the backbone body
    # lr multiplier of parameters named by LR_LINEAR_PROJ_NAMES
    d.LR_LINEAR_PROJ_MULT = non_negative(0.1)
    d.LR_LINEAR_PROJ_NAMES = ("reference_points", "sampling_offsets")  # name fragments
    # Sparse DETR
    d.RHO = probability(0.0)  # encoder token keep ratio; 0 = dense encoder; > 0 needs TWO_STAGE
    d.USE_ENC_AUX_LOSS = False  # detection losses on selected tokens after encoder layers 1..L-1
    d.EFF_QUERY_INIT = False  # decoder content queries = encoder memory at the top proposals
    d.EFF_SPECIFIC_HEAD = False  # proposal objectness = max class logit, trained with real labels
    d.MASK_PREDICTION_COEF = non_negative(1.0)  # weight of the scoring network's DAM loss
    d.DAM_HALF_PIXEL = True  # DAM uses the kernel's x * W - 0.5 pixel mapping (False: x * W)
