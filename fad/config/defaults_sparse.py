"""Config keys of SparseResNet (merged into the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_sparse_config(cfg: CN) -> None:
    """Add the SparseResNet (MODEL.SPARSE) keys in place."""
    sp = cfg.MODEL.SPARSE = CN()
    sp.MASKED = True  # False: plain (optionally deformable) blocks, the dense baseline
    sp.LOSS_WEIGHT = 0.0  # sparse loss weight w (published 0.02/0.05/0.1/0.2); 0 = off
    sp.MASK_INIT_BIAS = 3.0  # initial mask logit: sampling probability sigmoid(3) = 0.953
    sp.TEMPERATURE_INIT = 1.0  # Gumbel temperature at the first training forward
    sp.TEMPERATURE_DECAY = 0.99998  # temperature factor after every training forward
    sp.TEST_TEMPERATURE = 0.03  # Gumbel temperature of stochastic sampling at inference
    sp.SAMPLING = "stochastic"  # inference: "stochastic" (Bernoulli(p)) or "deterministic" (p>=.5)
    sp.GRID_INTERVAL = 11  # grid prior: every this many rows/columns always sampled (0 = off)
    sp.INTERP_KERNEL = 7  # window of the Gaussian interpolation (odd)
    sp.INTERP_INIT_SCALE = 3.0  # initial learnable Gaussian scale s of each interpolation site
    sp.EXECUTION = "dense_masked"  # inference: "dense_masked" (reference) or "sparse" (skips work)
    sp.STAGE_WITH_DCN = (False, False, False, False)  # deformable conv2 in res2..res5
