import pytest
import torch

from kernelsketch._checks import (
    check_attention_inputs,
    check_choice,
    check_float,
    check_generator,
    check_int,
    check_same,
    check_tensor,
)


def test_check_int():
    assert check_int("n", 3, min=1, max=5) == 3
    with pytest.raises(TypeError, match=r"n must be an int, got float 3.0"):
        check_int("n", 3.0)
    with pytest.raises(TypeError, match="n must be an int, got bool"):
        check_int("n", True)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int("n", 0, min=1)
    with pytest.raises(ValueError, match="n must be <= 5, got 6"):
        check_int("n", 6, max=5)


def test_check_float():
    assert check_float("x", 2, min=0.0) == 2.0
    with pytest.raises(TypeError, match="x must be a real number, got str"):
        check_float("x", "1")
    with pytest.raises(ValueError, match="x must be finite"):
        check_float("x", float("nan"))
    with pytest.raises(ValueError, match="x must be > 0"):
        check_float("x", 0.0, min=0.0, min_exclusive=True)
    with pytest.raises(ValueError, match="x must be <= 1"):
        check_float("x", 1.5, max=1.0)


def test_check_choice_and_generator():
    assert check_choice("kind", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"kind must be one of \('a', 'b'\), got 'c'"):
        check_choice("kind", "c", ("a", "b"))
    check_generator(None)
    check_generator(torch.Generator(), "cpu")
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        check_generator(1)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator must be on the inputs' device type cuda"):
            check_generator(torch.Generator(), "cuda")


def test_check_tensor_and_same(torch_generator):
    x = torch.randn(2, 3, generator=torch_generator)
    assert check_tensor("x", x, ndim=2) is x
    with pytest.raises(ValueError, match="x must have 3 or 4 dimensions, got shape"):
        check_tensor("x", x, ndim=(3, 4))
    with pytest.raises(TypeError, match="x must have dtype in"):
        check_tensor("x", x.int())
    with pytest.raises(ValueError, match="x must be non-empty"):
        check_tensor("x", x[:0])
    with pytest.raises(ValueError, match="x must be finite"):
        check_tensor("x", torch.tensor([1.0, float("inf")]))
    with pytest.raises(TypeError, match="y must have the same dtype as x"):
        check_same(("x", "y"), (x, x.double()))


def test_check_attention_inputs_returns_sizes(torch_generator):
    g = torch_generator
    q = torch.randn(2, 6, 5, 4, generator=g)
    k, v = torch.randn(2, 3, 7, 4, generator=g), torch.randn(2, 3, 7, 9, generator=g)
    assert check_attention_inputs(q, k, v) == (2, 6, 3, 5, 7)


def test_meta_tensors_are_refused_naming_the_argument():
    import kernelsketch as ks

    q = torch.empty(1, 2, 8, 4, device="meta")
    with pytest.raises(ValueError, match="x must hold data .* meta device"):
        check_tensor("x", q)
    for method in ks.available_methods():
        with pytest.raises(ValueError, match="q must hold data"):
            ks.attention(q, q, q, method=method, is_causal=True)


def test_softmax_logits_beyond_float32_are_refused_naming_q_k_and_scale():
    import kernelsketch as ks

    x = torch.ones(1, 1, 4, 8)
    for method in ("exact", "hyper", "kde", "lev"):
        with pytest.raises(ValueError, match=r"q and k must keep q·k and the logits scale·q·k "
                                             r"within float32's range .* or pass a smaller scale"):
            ks.attention(x * 1e18, x * 1e18, x, method=method)
        with pytest.raises(ValueError, match="q and k must keep q·k"):  # q·k itself overflows
            ks.attention(x * 1e20, x * 1e20, x, method=method, scale=1e-30)
    assert torch.isfinite(ks.attention(x * 1e16, x * 1e16, x)).all()
    # float64 logits have float64's range; polynomial attention rescales itself
    assert torch.isfinite(ks.attention((x * 1e18).double(), (x * 1e18).double(), x.double())).all()
    assert torch.isfinite(ks.attention(x * 1e30, x * 1e30, x, method="polynomial")).all()
