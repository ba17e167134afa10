"""Operations: one file per op, each with a plan, a reference, a custom op and backends."""
from nffk.ops.segment_sum import segment_sum  # noqa: F401
