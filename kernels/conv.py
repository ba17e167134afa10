"""Triton fused conv: the tensor-product contraction of `tensor_product.py` run over a graph.

No per-edge tensor is ever written, and nothing is accumulated with atomics, so results are
bit-for-bit reproducible:

    forward  one program per tile of receivers x output channels sums its receiver-CSR segment
             (edges are sorted by receiver): out[i] = sum_e TP(x[senders[e]], sh[e], w[e])
    vjp_x    one program per tile of senders sums its segment of the sender-sorted view
             (`sender_order`, `sender_ptr`): dx[j] = sum_e vjp_x1(g[receivers[e]], sh[e], w[e])
    vjp_sh   per edge (no reduction): vjp_x2(x[senders[e]], g[receivers[e]], w[e])
    vjp_w    per edge, or for shared weights fixed chunks of edges then one torch.sum

`graph` is an `nffk.ops.conv.ConvGraph` (only its tensors are read).
"""
from __future__ import annotations

from . import tensor_product as tp


def forward(plan, x, sh, w, graph, weighted_only, block_rows=None):
    return tp.contract(plan, "out", x, sh, w, weighted_only, graph.receiver_ptr.shape[0] - 1,
                       segments=graph.receiver_ptr, a_index=graph.senders, block_rows=block_rows)


def vjp_x(plan, g, sh, w, graph, weighted_only, block_rows=None):
    # Operands of x1 are (x2, out): sh[e] and g[receivers[e]], over the sender-sorted edges.
    return tp.contract(plan, "x1", sh, g, w, weighted_only, graph.sender_ptr.shape[0] - 1,
                       segments=graph.sender_ptr, perm=graph.sender_order, b_index=graph.receivers,
                       block_rows=block_rows)


def vjp_sh(plan, x, g, w, graph, weighted_only, block_rows=None):
    return tp.contract(plan, "x2", x, g, w, weighted_only, graph.senders.shape[0], a_index=graph.senders,
                       b_index=graph.receivers, block_rows=block_rows)


def vjp_w(plan, x, sh, g, graph, shared, block_rows=None):
    return tp.contract_weights(plan, x, sh, g, shared, graph.senders.shape[0], x1_index=graph.senders,
                               g_index=graph.receivers, block_rows=block_rows)
