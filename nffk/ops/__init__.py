"""Operations: one file per op, each with a plan, a reference, a custom op and backends."""
from nffk.ops.segment_sum import segment_sum  # noqa: F401
from nffk.ops.neighbor_list import NeighborList, edge_vectors, neighbor_list  # noqa: F401
