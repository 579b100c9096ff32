"""NAS pieces shared by the search and augment stages: primitives, RepShare, genotypes, diagrams."""
from .genotype import (
                       Genotype,
                       GenotypeError,
                       format_genotype,
                       parse_genotype,
                       parse_genotype_text,
                       read_genotype_file,
                       read_genotype_text,
)
from .primitives import PRIMITIVES

__all__ = ["Genotype", "GenotypeError", "PRIMITIVES", "format_genotype", "parse_genotype",
           "parse_genotype_text", "read_genotype_file", "read_genotype_text"]
