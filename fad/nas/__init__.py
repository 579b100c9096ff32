"""NAS pieces shared by the search and augment stages: primitives, RepShare, genotypes, diagrams."""
from .genotype import Genotype, GenotypeError, format_genotype, parse_genotype, read_genotype_file
from .primitives import PRIMITIVES

__all__ = ["Genotype", "GenotypeError", "PRIMITIVES", "format_genotype", "parse_genotype",
           "read_genotype_file"]
