"""FAD augment stage (installed as fad.augment): FCOS trained with the towers of a genotype.

Nothing of it is stage-specific any more, so it lives in `fad`: the augment detector is the FCOS
of `fad.modeling.fcos.build_fcos` with MODEL.FAD.GENOTYPE set (`fad-train --genotype-file
genotype.log` fills it; the genotype text is then in the run's config.yaml and checkpoints), its
edges, cells and towers are `fad.nas.cells` and its FLOPs `fad.nas.flops` (the search's cost
model counts those very modules). This package names them for the stage.
"""
from fad.modeling.fcos import build_fad_head
from fad.nas.cells import AugmentCell, AugmentTower, augment_edge
from fad.nas.flops import head_flops

__all__ = ["AugmentCell", "AugmentTower", "augment_edge", "build_fad_head", "head_flops"]
