"""FAD search stage (installed as fad.search): supernet, architect, derivation, search loop."""
from .architect import Architect, finite_difference_hvp
from .derive import derive_genotype, none_dominated_edges
from .engine import run_search, search
from .supernet import Supernet, build_search_head, build_supernet

__all__ = ["Architect", "Supernet", "build_search_head", "build_supernet", "derive_genotype",
           "finite_difference_hvp", "none_dominated_edges", "run_search", "search"]
