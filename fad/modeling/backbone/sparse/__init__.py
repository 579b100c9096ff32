"""SparseResNet parts: masks, interpolation, sparse execution, FLOPs, compiled kernel."""
