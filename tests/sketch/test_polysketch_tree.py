"""PolySketch is the tree its docstring describes: leaf i sketches x (first j leaves) or e1,
and node i of each level sketches the pair of its children 2i, 2i+1 with its OWN
Degree2Sketch. Built here by hand from the public ``leaves`` and ``levels``.

Sharing one node sketch across a level (node ``[0]`` for every ``[index]``) biases
<S(x), S(y)> by only a few percent at d_out = 8 (measured over 2000 seeds: within
the Monte-Carlo noise of the unbiasedness tests), so the tree is checked exactly.
"""

import pytest
import torch

from kernelsketch.sketch.tensor import PolySketch


def by_hand(ps, x, j):
    """Root of the tree with x on the first j leaves and e1 on the others."""
    e1 = torch.zeros(ps.d_in, dtype=x.dtype)
    e1[0] = 1
    nodes = [leaf(x if i < j else e1.expand_as(x)) for i, leaf in enumerate(ps.leaves)]
    for level in ps.levels:
        assert len(level) == len(nodes) // 2
        nodes = [node(nodes[2 * i], nodes[2 * i + 1]) for i, node in enumerate(level)]
    assert len(nodes) == 1
    return nodes[0]


@pytest.mark.parametrize("kind", ["srht", "gaussian", "countsketch", "tensorsketch"])
@pytest.mark.parametrize("degree", [1, 2, 3, 5, 8])
def test_root_is_the_tree_of_independent_node_sketches(kind, degree, seed):
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = 8, 8
    ps = PolySketch(d_in, d_out, degree, kind=kind, generator=g)
    x = torch.randn(3, d_in, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ps(x), by_hand(ps, x, degree), rtol=1e-12, atol=1e-12)
    powers = ps.all_powers(x)
    for j in range(1, degree + 1):
        torch.testing.assert_close(powers[j], by_hand(ps, x, j), rtol=1e-12, atol=1e-12)
    # Through the leaves' outputs (the sparse-input path).
    root = ps.power_from_leaves(lambda i: ps.leaves[i](x), degree, like=x)
    torch.testing.assert_close(root, by_hand(ps, x, degree), rtol=1e-12, atol=1e-12)


def test_nodes_of_a_level_are_different_sketches(seed):
    # The check above needs distinct nodes to tell [index] from [0].
    ps = PolySketch(8, 8, 4, kind="gaussian", generator=torch.Generator().manual_seed(seed))
    a, b = ps.levels[0]
    x = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    assert not torch.allclose(a(x, x), b(x, x))
