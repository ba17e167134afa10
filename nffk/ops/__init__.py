"""Operations: one file per op, each with a plan, a reference, a custom op and backends."""
from nffk.ops._outputs import empty_cache  # noqa: F401
from nffk.ops.conv import ConvGraph, conv  # noqa: F401
from nffk.ops.linear import LinearPlan, linear  # noqa: F401
from nffk.ops.neighbor_list import NeighborList, edge_vectors, neighbor_list  # noqa: F401
from nffk.ops.segment_sum import segment_sum  # noqa: F401
from nffk.ops.spherical_harmonics import spherical_harmonics  # noqa: F401
from nffk.ops.tensor_product import TensorProductPlan, tensor_product  # noqa: F401
