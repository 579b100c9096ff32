"""Config keys of SparseResNet (merged into the defaults by fad.config.build)."""
from .rules import Node as CN
from .rules import choice, in_range, non_negative, positive


def add_sparse_config(cfg: CN) -> None:
    """Add the SparseResNet (MODEL.SPARSE) keys in place."""
    sp = cfg.MODEL.SPARSE = CN()
    sp.MASKED = True  # False: plain (optionally deformable) blocks, the dense baseline
    # sparse loss weight w (published 0.02/0.05/0.1/0.2); 0 = off
    sp.LOSS_WEIGHT = non_negative(0.0)
    sp.MASK_INIT_BIAS = 3.0  # initial mask logit: sampling probability sigmoid(3) = 0.953
    sp.TEMPERATURE_INIT = positive(1.0)  # Gumbel temperature at the first training forward
    # temperature factor after every training forward
    sp.TEMPERATURE_DECAY = in_range(0.99998, 0, 1, low_open=True)
    sp.TEST_TEMPERATURE = positive(0.03)  # Gumbel temperature of stochastic sampling at inference
    # inference: "stochastic" (Bernoulli(p)) or "deterministic" (p>=.5)
    sp.SAMPLING = choice("stochastic", ("stochastic", "deterministic"))
    # grid prior: every this many rows/columns always sampled (0 = off)
    sp.GRID_INTERVAL = non_negative(11)
    sp.INTERP_KERNEL = positive(7)  # window of the Gaussian interpolation (odd)
    # initial learnable Gaussian scale s of each interpolation site
    sp.INTERP_INIT_SCALE = positive(3.0)
    # inference: "dense_masked" (reference) or "sparse" (skips work)
    sp.EXECUTION = choice("dense_masked", ("dense_masked", "sparse"))
    # deformable conv2 in res2..res5
    sp.STAGE_WITH_DCN = in_range((False, False, False, False), lengths=(4,))
