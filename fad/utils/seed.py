"""Seeding of every random generator the toolkit uses."""
from __future__ import annotations

import random
import time

import numpy as np
import torch


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch; a negative seed draws one from the clock. Returns it."""
    if seed < 0:
        seed = int(time.time() * 1000) % (2**31)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed
