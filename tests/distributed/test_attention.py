"""context_parallel_attention on 2 and 4 gloo processes equals ks.attention on the whole
sequence, and sends the bytes its design says.

One spawn per world size runs every case (process start-up dominates the cost); the
tests below read its results.
"""

import math

import pytest
import torch

from kernelsketch.distributed import context_parallel_attention

from .launch import run_ranks
from .workers import (
    DEFAULTS,
    SAME_DRAWS,
    SAME_DRAWS_INPUTS,
    attention_job,
    equality_cases,
    same_draws_id,
)

CASES = equality_cases()
F64 = 8  # bytes per element


@pytest.fixture(scope="module", params=[2, 4], ids=lambda p: f"P{p}")
def runs(request):
    return request.param, run_ranks(attention_job, request.param)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_equals_single_process(runs, case):
    # float64: every rank's rows of the output, the LSE and the gradients of q, k, v
    # equal the single-process call up to rounding (measured <= 4e-15).
    world, results = runs
    for rank, res in enumerate(results):
        r = res["equality"][case]
        assert r["lse_inf_match"], (world, rank)
        for key in ("out", "lse", "dq", "dk", "dv"):
            assert r[key] <= 1e-10, (world, rank, key, r[key])


def _sent(by_op, *ops):
    return sum(by_op.get(op, 0) for op in ops)


def test_exact_bytes_are_the_ring(runs):
    # Ring attention: P - 1 shifts of the key/value shard, O(N/P d) each; the causal
    # zig-zag deal adds at most one shard of q, k, v out and of (out, lse) back.
    world, results = runs
    for res in results:
        for (method, causal, N, D), by_op in res["scaling"].items():
            if method != "exact":
                continue
            n = N // world
            shard = 2 * n * D * F64  # one head-shard of k or of q, H = 2
            assert by_op["ring_shift"] == (world - 1) * 2 * shard
            if causal:
                assert 0 < by_op["all_to_all"] <= 3 * shard + 2 * n * (D + 1) * F64
            assert set(by_op) <= {"validate", "ring_shift", "all_to_all"}
        for causal in (False, True):
            for D in (8, 16):
                small, large = (res["scaling"]["exact", causal, N, D] for N in (64, 128))
                assert _sent(large, "ring_shift") == 2 * _sent(small, "ring_shift")


def test_lev_bytes_independent_of_length(runs):
    # LevAttention: the d x d Gram (all-reduce), the candidates (all-gather of P x budget
    # (score, position) pairs) and the budget selected keys/values (all-reduce): O(d²),
    # nothing that grows with N.
    world, results = runs
    budget, heads = 8, 2
    ring = 2 * (world - 1) / world
    for res in results:
        for causal in (False, True):
            for D in (8, 16):
                small, large = (res["scaling"]["lev", causal, N, D] for N in (64, 128))
                assert small == large
                gram = heads * D * D * F64
                selected = heads * budget * 2 * D * F64
                assert small["all_reduce"] == round(ring * gram) + round(ring * F64) + \
                    round(ring * selected)
                assert small["all_gather"] == (world - 1) * 2 * heads * budget * F64
            grow = (res["scaling"]["lev", causal, 64, 16]["all_reduce"]
                    - res["scaling"]["lev", causal, 64, 8]["all_reduce"])
            assert grow == pytest.approx(ring * heads * F64 * (16**2 - 8**2 + budget * 2 * 8),
                                         abs=3)


def test_polysketch_bytes_are_the_states(runs):
    # PolySketch: one state [r², Dv + 1] per head (all-reduce) non-causal; causal, two
    # states per rank all-gathered (the exclusive scan, O(P r² Dv)) and, when the shard
    # is not a multiple of the block, the < block_size keys of the straddling block.
    world, results = runs
    r2, heads, block = 16, 2, 8
    for res in results:
        for D in (8, 16):
            state = heads * r2 * (D + 1) * F64
            small, large = (res["scaling"]["polysketch", False, N, D] for N in (64, 128))
            assert small == large
            assert small["all_reduce"] == round(2 * (world - 1) / world * state)
            for N in (64, 128):
                causal = res["scaling"]["polysketch", True, N, D]
                assert causal["all_gather"] == (world - 1) * 2 * state
                halo = max(r * (N // world) % block for r in range(world))
                assert causal.get("ring_shift", 0) == heads * halo * 2 * D * F64


@pytest.mark.parametrize("case", [same_draws_id(name, shape, offset) for name, _ in SAME_DRAWS
                                  for shape, offset in SAME_DRAWS_INPUTS])
def test_hyper_routing_reproduces_the_single_process_blocks(runs, case):
    # Non-causal HyperAttention with the generator the distributed call derives: the hash
    # centred by the all-reduced mean rows, the bucket histograms, the sorted positions and
    # the routing to the block owners rebuild the single-process blocks exactly, and the shared generator draws the same samples, so
    # output, LSE and gradients equal attn/hyper/naive.hyper_noncausal up to rounding.
    world, results = runs
    for rank, res in enumerate(results):
        r = res["same_draws"][case]
        for key in ("out", "lse", "dq", "dk", "dv"):
            assert r[key] <= 1e-10, (world, rank, key, r[key])


ERRORS = {
    "unequal-shards": ("ValueError", "q must have the same shape on every rank"),
    "dtype": ("TypeError", "same dtype on every rank"),
    "generator": ("ValueError", "generator must be in the same state on every rank"),
    "causal-flag": ("ValueError", "method, is_causal and scale must be the same on every rank"),
    "method": ("ValueError", "method must be one of"),
    "causal-cross": ("ValueError", "needs query and key shards of equal length"),
    "lsh-bits": ("ValueError", "lsh_bits must be <= 16"),
    "window-cross": ("ValueError", "window needs query and key shards of equal length"),
    "auto": ("TypeError", "config='auto' is single-process"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_raises_the_same_error_on_every_rank(runs, case):
    _, results = runs
    kind, text = ERRORS[case]
    for res in results:
        assert res["errors"][case] is not None, case
        assert res["errors"][case][0] == kind and text in res["errors"][case][1], res["errors"]
    assert all(res["errors"]["after"] <= 1e-12 for res in results)


def test_needs_an_initialised_process_group():
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        context_parallel_attention(q, q, q, method="exact")


def test_low_precision(runs):
    # float32 and bfloat16 shards give finite outputs of their dtype; exact, lev and
    # polysketch agree with the single-process call to the dtype's rounding (measured at
    # P = 2, 4: <= 3.6e-7 in float32, <= 7.8e-3 in bfloat16).
    world, results = runs
    for res in results:
        for (method, dtype, causal), r in res["low_precision"].items():
            assert r["dtype"] == dtype and r["finite"], (world, method, dtype, causal)
            if method in ("exact", "lev", "polysketch"):
                bound = 1e-5 if dtype == "torch.float32" else 5e-2
                assert r["diff"] <= bound, (world, method, dtype, causal, r["diff"])


def test_hyper_bytes_are_a_shard(runs):
    # HyperAttention: each query and key row goes at most once to the owner of its block
    # (with an int64 slot) and each query's (out, lse) comes back: O(N/P d) per rank (per
    # depth of the causal recursion, ceil(log2 P) depths), plus the bucket histograms
    # (2^bits per head, all-gathered), the sampled rows and the problems' mean query and key
    # rows that centre the hash (all-reduced), none growing with N.
    world, results = runs
    heads, bits, samples = 2, 4, 8
    depths = math.ceil(math.log2(world))
    for res in results:
        for causal in (False, True):
            for D in (8, 16):
                small, large = (res["scaling"]["hyper", causal, N, D] for N in (64, 128))
                for N, by_op in ((64, small), (128, large)):
                    n = N // world
                    rows = heads * n * ((D + 1) + (2 * D + 1) + (D + 1)) * F64
                    counts = 2 * 2 * world * F64  # the two sides' row counts, there and back
                    assert by_op["all_to_all"] <= (depths if causal else 1) * (rows + counts)
                    assert by_op["all_to_all"] >= rows / (4 * world)
                    hist = 2 * heads * 2**bits * F64
                    assert by_op["all_gather"] == (depths if causal else 1) * (world - 1) * hist
                if not causal:  # the samples' keys, values and block ids, whatever N
                    sampled = heads * samples * (2 * D + 1) * F64
                    means = 2 * heads * D * F64
                    assert small["all_reduce"] == large["all_reduce"] == \
                        round(2 * (world - 1) / world * sampled) + \
                        round(2 * (world - 1) / world * means)
                    ratio = large["all_to_all"] / small["all_to_all"]
                    assert 1.5 < ratio < 2.5, ratio


@pytest.mark.parametrize("method", ["hyper", "kde"])
@pytest.mark.parametrize(("N", "causal"), DEFAULTS, ids=lambda x: str(x))
def test_default_configs_follow_the_single_process(runs, method, N, causal):
    # HyperConfig() / KDEConfig() (min_seq_len 1024, sink 8, window 128): where the single
    # process computes exact attention (non-causal N <= 1024, causal N <= 2048), so does the
    # context-parallel call (ring attention, with the same ExactFallbackWarning); beyond, the
    # sketch runs (far from exact). HyperAttention's draws are then the single process's
    # (uniform sampling; P = 2, 4 put the one sketched causal block where the single
    # process's recursion has it): equal up to rounding, gradients included (measured
    # out <= 6e-16, gradients <= 4e-15; the backward through the rank recursion, the sink and
    # window keys and the routed blocks). KDEformer's importance
    # samples are drawn per rank: its error distribution is in test_sortlsh.py.
    world, results = runs
    exact_there = N <= 1024 or (causal and N <= 2048)
    for rank, res in enumerate(results):
        r = res["defaults"][method, N, causal]
        assert r["warned"] == exact_there, (world, rank)
        # a causal sketch on CPU below the break-even says so once, for the whole call (the
        # shards' own single-process calls do not warn)
        assert len(r["no_speedup"]) == (causal and not exact_there), (world, rank, r)
        assert all("context parallel" in m for m in r["no_speedup"]), r
        assert r["grad_finite"], (world, rank)
        if exact_there:
            assert r["vs_exact"] <= 1e-10, r
        if exact_there or method == "hyper":  # with the gradients of q, k and v
            for key in ("out", "lse", "dq", "dk", "dv"):
                assert r[key] <= 1e-10, (world, rank, key, r)
        # the sketched causal block holds the second half's queries (the first half's are exact)
        if not exact_there and (rank >= world // 2 or not causal):
            assert r["vs_exact"] > 1e-3, (world, rank, r)
