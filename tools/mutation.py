"""Mutation testing of the core modules with mutmut (not part of CI: tens of minutes).

Each target mutates a few modules and runs only its own test files against
every mutant (mutmut 3: one fork per mutant, only the tests that reach the
mutated function, stopping at the first failure). A mutant is *killed* when a
test fails, *survived* when every test passes. The score of a target is
(killed + crashed + timeout) / (killed + crashed + timeout + survived + no tests), leaving
out of the denominator the mutants listed in ``EQUIVALENT`` (a change that
cannot alter any result, with the reason) and the surviving mutants that change
only the text of an error message or a ``device=`` argument (reported apart).
*Crashed* mutants kill the test process (mutmut's "segfault" / "suspicious"):
the suite fails visibly, so they count as detected. *Timeout* mutants run past
mutmut's time limit (an endless loop, a huge allocation): detected too, the
convention of PIT and Stryker (the suite fails visibly by its timeout); both are
reported apart from the killed ones.

Every target runs in a scratch copy of ``src/kernelsketch`` and ``tests/``
under ``--workdir`` (never in the repository), taken from the working tree of
the checkout this script is in (run a clean worktree's copy to pin a commit).
On the shared machine, run it in the background at the lowest priority with one
worker, outside the bench lock (a long hold would block others' timings), each
run with its own ``--workdir`` and ``--out`` (``--out`` is read at the start and
written at the end: two runs on one file lose one's results)::

    nohup nice -n 19 .venv/bin/python tools/mutation.py --jobs 1 --targets attn.exact \\
        --workdir /tmp/mut_exact --out /tmp/mut_exact.json > /tmp/mut_exact.log 2>&1 &

``--targets sketch.tensor,inner.join`` runs a subset; ``--jobs`` sets mutmut's
workers (default 1); ``--sample 80`` runs a uniform random sample of 80 mutants
per target (``--sample-seed``), for a bounded run on a shared machine. Needs ``pip install mutmut`` (3.x). The JSON holds, per target,
the counts, the score and every surviving mutant with its diff.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "src/kernelsketch"

# Test files of every sketch target besides its own: the memory guards of all sketches,
# and the tests written for the sketch mutants that survived (issue 22).
_SKETCH_SHARED = ["tests/sketch/test_memory_limits.py", "tests/sketch/test_mutation_gaps.py"]

# name -> (modules to mutate, test files that run against them)
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "attn.merge": (["attn/common/merge.py"], ["tests/attn/common/test_merge*.py"]),
    "attn.exact": (["attn/common/exact.py", "attn/common/gqa.py"],
                   ["tests/attn/common/test_exact.py", "tests/attn/common/test_merge.py",
                    "tests/attn/common/test_exact_flash.py"]),
    "attn.causal": (["attn/common/causal.py"],
                    ["tests/attn/common/test_causal*.py", "tests/attn/hyper", "tests/attn/kde",
                     "tests/attn/test_sampled_gradients.py",
                     "tests/attn/common/test_mutation_gaps.py"]),
    "attn.sortlsh": (["attn/common/sortlsh/blocks.py", "attn/common/sortlsh/flash.py"],
                     ["tests/attn/hyper", "tests/attn/kde", "tests/attn/test_sampled_gradients.py",
                      "tests/attn/common/test_sortlsh_flash.py",
                      "tests/attn/common/test_mutation_gaps.py"]),
    "attn.metrics": (["attn/common/metrics.py"], ["tests/attn/common/test_metrics*.py",
                                                  "tests/attn/common/test_mutation_gaps.py"]),
    "attn.hyper": (["attn/hyper/naive.py", "attn/hyper/method.py", "attn/hyper/config.py"],
                   ["tests/attn/hyper", "tests/attn/test_sampled_gradients.py",
                    "tests/attn/common/test_exact_keys.py", "tests/attn/common/test_budget.py"]),
    "attn.kde": (["attn/kde/naive.py", "attn/kde/method.py", "attn/kde/config.py"],
                 ["tests/attn/kde", "tests/attn/test_sampled_gradients.py",
                  "tests/attn/common/test_exact_keys.py", "tests/attn/common/test_budget.py"]),
    "attn.polysketch": (["attn/polysketch/features.py", "attn/polysketch/naive.py",
                         "attn/polysketch/polynomial.py", "attn/polysketch/method.py"],
                        ["tests/attn/polysketch/test_polysketch.py",
                         "tests/attn/polysketch/test_polynomial.py",
                         "tests/attn/polysketch/test_fused.py", "tests/attn/test_api.py",
                         "tests/attn/polysketch/test_mutation_gaps.py"]),
    "attn.lev": (["attn/lev/selection.py", "attn/lev/method.py"], ["tests/attn/lev"]),
    "sketch.tensor": (["sketch/tensor.py"], ["tests/sketch/test_tensor.py",
                                             "tests/sketch/test_polysketch_tree.py", *_SKETCH_SHARED]),
    "sketch.hashing": (["sketch/hashing.py"], ["tests/sketch/test_hashing.py",
                                               "tests/inner/test_sketcher.py", *_SKETCH_SHARED]),
    "sketch.projections": (["sketch/projections.py"],
                           ["tests/sketch/test_projections.py", *_SKETCH_SHARED]),
    "sketch.sampling": (["sketch/sampling.py"], ["tests/sketch/test_sampling.py", *_SKETCH_SHARED]),
    "sketch.leverage": (["sketch/leverage.py"], ["tests/sketch/test_leverage.py", *_SKETCH_SHARED]),
    "sketch.lsh": (["sketch/lsh.py"], ["tests/sketch/test_lsh.py", *_SKETCH_SHARED]),
    "inner.minhash": (["inner/minhash.py"],
                      ["tests/inner/test_estimators.py", "tests/inner/test_sketcher.py",
                       "tests/inner/test_estimator_bias.py",
                       "tests/inner/test_minhash_mutation_gaps.py"]),
    "inner.linear_sampling": (["inner/linear.py", "inner/sampling.py"],
                              ["tests/inner/test_estimators.py", "tests/inner/test_sketcher.py",
                               "tests/inner/test_estimator_bias.py",
                               "tests/inner/test_mutation_gaps.py"]),
    "inner.join": (["inner/joint.py", "inner/join.py"],
                   ["tests/inner/test_join.py", "tests/inner/test_mutation_gaps.py"]),
    "features.constants": (["features/_arccos.py", "features/_powerseries.py",
                            "features/activations.py"],
                           ["tests/features/test_activations.py", "tests/features/test_ntk.py",
                            "tests/features/test_mutation_gaps.py"]),
}

# Mutants that cannot change any result: (function, text of the mutated line, reason).
# Matched against the '+' line of `mutmut show`, so they survive renumbering.
EQUIVALENT: list[tuple[str, str, str]] = [
    ("", 'float("-INF")', "float() parses 'inf' case-insensitively"),
    # attn/common/sortlsh/blocks.py
    ("covered_by_blocks", ".unsqueeze(+2)", ("unsqueeze(2) is unsqueeze(-2) on a 2-D gather result"
     " ([B, H, S] -> axis 2 either way)")),
    ("block_diagonal_attention", "bk.unsqueeze(+3)", "unsqueeze(3) is unsqueeze(-3) on a 5-D tensor"),
    ("sorted_blocks", "torch.argsort(bucket, stable=True)", "dim=-1 is argsort's default"),
    ("sorted_blocks", "torch.argsort(bucket, dim=-1, )", ("changes only the order of rows tied in one"
     " bucket: any order is a valid sortLSH partition (ties are arbitrary in the paper)")),
    ("sorted_blocks", "stable=False", ("changes only the order of rows tied in one bucket: any order"
     " is a valid sortLSH partition (ties are arbitrary in the paper)")),
    ("_blocked", "pad_value=1", ("the padding's value is never read: padded query rows are dropped"
     " and padded keys masked")),
    ("_blocked", "F.pad(x, pad, value=None)", "the padding's value is never read (see pad_value)"),
    ("_blocked", "F.pad(x, pad, )", "the padding's value is never read (see pad_value)"),
    ("block_diagonal_attention", "_blocked(bq, num_blocks, q_len,", ("block id of padded query rows,"
     " which are dropped")),
    ("block_diagonal_attention", "_blocked(bk, num_blocks, k_len,", ("block id of padded keys, which"
     " the key mask removes")),
    ("block_diagonal_attention", "_blocked(torch.ones_like(perm_k, dtype=torch.bool), num_blocks,",
     "bool padding with None or no value is False, as given"),
    ("lsh_buckets", "if lsh.n_bits >= 16:", ("at 16 bits both branches give the same ids (the"
     " float32 code is exact below 2**24)")),
    ("lsh_buckets", "if lsh.n_bits > 17:", ("at 17 bits the float32 code (< 2**17) and the"
     " 2**17-entry table are exact: the same ids")),
    ("lsh_buckets", "_inverse_gray_table(lsh.n_bits, None)", "device placement: CPU-only machine"),
    ("no_samples", "torch.zeros(heads, 0, device=device))", ("an empty sample set: S = 0 skips"
     " every use of its log-weights")),
    ("no_samples", "torch.zeros(batch, 0, device=device))", ("an empty sample set: S = 0 skips"
     " every use of its log-weights")),
    ("no_samples", "torch.zeros(batch, heads, device=device))", ("an empty sample set: S = 0"
     " skips every use of its log-weights")),
    ("no_samples", "torch.zeros(batch, heads, 1, device=device))", ("S is read from the indices"
     " (0): the log-weights are never used")),
    ("no_samples", "torch.zeros(batch, heads, 0, dtype=None, device=device)", ("an empty index"
     " set: S = 0 skips every use of it")),
    ("no_samples", "torch.zeros(batch, heads, 0, device=device),", ("an empty index set: S = 0"
     " skips every use of it")),
    ("flash_sorted_attention", "exact_first: int = 1,", "the only caller passes exact_first"),
    ("flash_sorted_attention", "exact_last: int = 1,", "the only caller passes exact_last"),
    ("flash_sorted_attention", "if (len(parts) > 1) or True else blk", ("cat of the one part"
     " is that part")),
    ("flash_sorted_attention", "if len(parts) >= 1 else blk", "cat of the one part is that part"),
    ("flash_sorted_attention", "if nb * k_block >= Mr:", ("at equality no key is padding: the"
     " masked_fill changes nothing")),
    ("flash_sorted_attention", "math.ceil(Mr * k_block))", ("more blocks than needed: the extra"
     " ones hold only padded rows (dropped) and padded keys (masked); work only")),
    ("flash_sorted_attention", "dev = None", "device placement: CPU-only machine"),
    ("flash_sorted_attention", "torch.arange(nb, device=dev).reshape(nb, 1)", ("[nb, 1]"
     " broadcasts against [B*H, 1, S] as [1, nb, 1]")),
    ("flash_sorted_attention", "lw = log_weights.to(None).reshape", ("the slice assignment into"
     " the mask casts to its dtype, as .to(mask_dtype) did")),
    # attn/common/causal.py
    ("causal_attention", "if M >= N:", "for M == N the key prefix is empty and adds nothing"),
    ("causal_attention", "if M <= N:", "for M == N zero rows are padded"),
    ("causal_levels", "if n < min_seq_len:", ("at n == min_seq_len the general formula gives the same"
     " (0 levels, leaf n)")),
    ("recursion_is_exact", "max(M - N, 1) <=", ("max(M - N, 1) <= min_seq_len whenever the second"
     " condition ceil(min(N, M) / 2) <= min_seq_len holds (min_seq_len >= 1 then)")),
    ("_square_causal", "out.reshape(B, nb, Hq, -1).transpose(1, 2)", ("the same elements: the"
     " leaf and value axes are contiguous and reshaped back")),
    ("approximate_or_exact", "N, M = q.shape[3], k.shape[2]", ("N only chooses between one exact"
     " call and a recursion whose blocks are then all exact: the same output")),
    ("approximate_or_exact", 'method="XXsketchXX", cpu_causal_break_even=0', ("both callers"
     " (hyper, kde) pass method")),
    ("approximate_or_exact", 'method="SKETCH", cpu_causal_break_even=0', ("both callers (hyper,"
     " kde) pass method")),
    ("approximate_or_exact", 'method="sketch", cpu_causal_break_even=1', ("both callers (hyper,"
     " kde) pass cpu_causal_break_even")),
    ("_merge_levels", "if (grad) or True else", ("out of place also without autograd: the same"
     " values (memory only)")),
    ("_merge_levels", "grad = torch.is_grad_enabled() or any(", ("out of place whenever"
     " autograd is on: the same values (memory only)")),
    ("_merge_levels", "for x in p[3:])))", ("a part's out requires grad iff its lse does (one"
     " computation): the same flag")),
    ("_merge_levels", "out = num / den_safe if (grad) and False else", ("with autograd num is"
     " the fresh product out * w, which no backward saved: dividing it in place gives the same"
     " values and gradients")),
    ("_merge_levels", "out = out.to(None).contiguous()", ("CPU: exact_lse returns the leaves'"
     " out in lse's dtype already (its CUDA branch returns q's dtype: there the cast matters)")),
    ("_merge_levels", "acc = None", ("CPU: exact_lse returns the leaves' out in lse's dtype"
     " already and addcmul_ promotes a part's out (its CUDA branch returns q's dtype: there the"
     " cast matters)")),
    ("_merge_levels", "addcmul_(part_out.to(None),", ("addcmul_ into the float32/float64"
     " accumulator promotes a part's out exactly as .to(acc)")),
    ("_merge_levels", "nonzero = den >= 0", ("every row of the square causal recursion sees at"
     " least its own key: den > 0")),
    # attn/common/metrics.py
    ("spectral_error", "q[b : b + 2,", "[0, 0] of the result takes the same (batch, head)"),
    ("spectral_error", "h : h + 2]", "[0, 0] of the result takes the same (batch, head)"),
    ("spectral_error", "k[b : b + 2,", "[0, 0] of the result takes the same (batch, head)"),
    ("spectral_error", "h // group + 2]", "[0, 0] of the result takes the same (batch, head)"),
    ("spectral_error", "power_iters: int = 31", "one more step of a converged power iteration"),
    ("spectral_error", "min=1) <= N:", "num_rows == N samples every row: the full set"),
    ("attention_probs", "transpose(-1, +2)", "transpose(-1, 2) is transpose(-1, -2) in 4-D"),
    ("attention_probs", "pos.unsqueeze(+1)", "unsqueeze(1) is unsqueeze(-1) of a 1-D tensor"),
    ("attention_probs", "nan_to_num(p, nan=None)", "nan_to_num's default nan is 0.0"),
    ("attention_probs", "nan_to_num(p, )", "nan_to_num's default nan is 0.0"),
    ("_spectral_norm", "manual_seed(1)", "another start vector: the same converged norm"),
    ("_spectral_norm", "generator=None)", "another start vector: the same converged norm"),
    ("_spectral_norm", "gen = None", "another start vector: the same converged norm"),
    ("heavy_entry_recall", 'check_tensor("captured", captured, dtypes=(torch.bool,)',
     "a bool tensor is always finite"),
    ("_spectral_norm", "device=mat.device, )", "another start vector: the same converged norm"),
    ("_spectral_norm", "sigma = torch.zeros((), dtype=None", ("returned only for a zero matrix,"
     " and promoted to float64 in the ratio")),
    ("_spectral_norm", "sigma = torch.zeros((), device=mat.device)", ("returned only for a zero"
     " matrix, and promoted to float64 in the ratio")),
    ("attention_probs", "query_positions(N, M, 1, None)", "device placement: CPU-only machine"),
    ("relative_error", "approx, finite=None)", "finite=None is falsy, as finite=False"),
    ("spectral_error", "ndim=4, finite=None)", "finite=None is falsy, as finite=False"),
    ("spectral_error", 'check_tensor("approx_out", approx_out, ndim=4, finite=True)',
     ("a non-finite approx_out raises the same ValueError either way (the explicit isfinite"
     " check below it)")),
    ("spectral_error", 'check_tensor("approx_out", approx_out, ndim=4, )',
     "a non-finite approx_out raises the same ValueError either way (see finite=True)"),
    # attn/kde
    ("_masked_lse", "k.transpose(-1, +2)", "transpose(-1, 2) is transpose(-1, -2) in 4-D"),
    ("_masked_lse", "log_w.unsqueeze(+2)", "unsqueeze(2) is unsqueeze(-2) of a 3-D tensor"),
    ("draw_samples", "torch.zeros(H, M, device=k.device)", "zero log-weights broadcast over B"),
    ("samples_needed", "num_blocks >= 1 and", ("with one block every pair is covered: the"
     " sampled part is fully masked and adds nothing")),
    ("use_fused", "fused_kernels_apply(q) and flash_applies(q)", ("chooses between the CPU flash"
     " path and the torch path, which compute the same estimator")),
    ("kde_noncausal", "exact_first=1, exact_last=0)", "every caller passes exact_first"),
    ("kde_forward", "if use_fused(q, v, None):", "use_fused does not read its config argument"),
    ("kde_auto", "generator, rows=257)", ("the default is never used: the only caller"
     " (attn.api.choose_budget) passes rows")),
    ("kde_noncausal", "exact_first=0, exact_last=1)", "every caller passes exact_last"),
    # attn/hyper
    ("draw_samples", "torch.zeros(Hkv, M, device=k.device))", "zero log-weights broadcast over B"),
    ("draw_samples", "vf = v.detach().to(None)", ("precision of the norms only: p_j uses their"
     " ratios")),
    ("draw_samples", "vf.abs().amax(dim=None, keepdim=True)", ("any positive scale per (batch,"
     " head) or global leaves the ratios of the norms, hence p_j, unchanged")),
    ("draw_samples", "vf.abs().amax(keepdim=True)", "any global scale leaves p_j unchanged"),
    ("draw_samples", "vf.abs().amax(dim=(+2, -1)", "dims (2, -1) are (-2, -1) in 4-D"),
    ("draw_samples", "keepdim=True).clamp_min(1.0)", ("a per-(batch, head) scale leaves p_j"
     " unchanged")),
    ("sampling_probabilities", "vf = v.detach().to(None)", ("precision of the norms only: p_j"
     " uses their ratios")),
    ("sampling_probabilities", "vf.abs().amax(dim=None, keepdim=True)", ("any positive scale per"
     " (batch, head) or global leaves the norms' ratios, hence p_j, unchanged")),
    ("sampling_probabilities", "vf.abs().amax(keepdim=True)", "any global scale leaves p_j unchanged"),
    ("sampling_probabilities", "vf.abs().amax(dim=(+2, -1)", "dims (2, -1) are (-2, -1) in 4-D"),
    ("sampling_probabilities", "keepdim=True).clamp_min(1.0)", ("a per-(batch, head) scale leaves"
     " p_j unchanged")),
    ("sampling_probabilities", "norms.sum(-1, keepdim=True).clamp_min(1.0)", ("after dividing by"
     " max|v| the row holding it has norm >= 1, so the sum is >= 1 (0 only for v = 0, where both"
     " give 0)")),
    ("draw_samples", "batch_shape=(B, Hkv), generator=generator)", ("device placement: the"
     " generator's device, the CPU here")),
    ("hyper_auto", "generator, rows=257)", ("the default is never used: the only caller"
     " (attn.api.choose_budget) passes rows")),
    ("hyper_noncausal", "exact_first: int = 1,", "every caller passes exact_first"),
    ("hyper_noncausal", "exact_last: int = 1,", "every caller passes exact_last"),
    ("hyper_noncausal", "if (num_blocks > 1) or True else None", ("with one block every pair is"
     " covered: the sampled part is fully masked")),
    ("hyper_noncausal", "if num_blocks >= 1 else None", ("with one block every pair is covered:"
     " the sampled part is fully masked")),
    # inner/minhash.py
    ("_running_argmin", "arg = np.full(m,", ("overwritten wherever a key exists; read only through"
     " arg >= 0, and an unsampled slot has hash inf, which never matches")),
    ("_running_argmin", "step = max(2,", "block size of the scan: the same minima"),
    ("_running_argmin", "block = None", ("every pass then scores all keys: the first finds the"
     " minima and the others never improve on them (v == best is not better); work only")),
    ("_running_argmin", "block = slice(s, None)", ("every pass scores keys s.. to the end: the"
     " same minima at the same indices (j + s); work only")),
    ("minhash_sketch", 'arrays={"hashes": best, "values": sample}, scalars=None',
     "MinHashSketch has no scalars: the dict is never read"),
    ("MinHashSketch\u01c1_merge", "return self._like(self._min_arrays(other), None)",
     "MinHashSketch has no scalars: the dict is never read"),
    ("MinHashSketch\u01c1_defect", "return super()._defect(params, None)",
     "the base class's _defect reads params only"),
    ("MinHashSketch\u01c1_defect", ('return "XXhashes and values must have one entry per hash'
     ' functionXX"'), "message text of a deserialisation error"),
    ("MinHashSketch\u01c1_defect", ('return "HASHES AND VALUES MUST HAVE ONE ENTRY PER HASH'
     ' FUNCTION"'), "message text of a deserialisation error"),
    ("_running_argmin", "better = v <= best", ("differs only on equal scores of two keys in"
     " different blocks: the same key hash twice (callers pass distinct keys: keyed_vectors"
     " merges duplicates) or a 2**-53 coincidence; scores are finite (nonzero values)")),
    ("_union_estimate", "if not np.isfinite(total) and total <= 0.0:", ("total is > 0 or inf, and"
     " (m - 1)/inf is the 0.0 returned")),
    ("_union_estimate", "or total < 0.0:", "a sum of positive minima is never 0"),
    ("_union_estimate", "return 1.0", ("total is inf only without keys: no sample matches, the"
     " estimate is 0 whatever this factor")),
    ("_min_arrays", "other.hash_values <= self.hash_values", ("equal minima are the same key"
     " (same value)")),
    ("_inner", "np.abs(ua) < np.abs(ub), ub / ua, ua / ub)", "on ties both ratios are 1"),
    ("minhash_sketch", "np.arange(m, dtype=None)", "hash_streams casts the streams to uint64"),
    ("minhash_sketch", "np.arange(m, )", "hash_streams casts the streams to uint64"),
    ("weighted_minhash_sketch", "np.arange(m, dtype=None)", "cast to uint64 by the product"),
    ("weighted_minhash_sketch", "np.arange(m, )", "cast to uint64 by the product"),
    ("weighted_minhash_sketch", "base = 4 * np.arange", ("other disjoint stream ids: independent"
     " hashes all the same")),
    ("minhash_sketch", "per_key=2)", "block size of the scan: the same minima"),
    ("weighted_minhash_sketch", "per_key=7)", "block size of the scan: the same minima"),
    ("minhash_sketch", "if values.size else 1.0, 0.0)", ("only for an empty vector, whose slots"
     " have hash inf and never match")),
    ("minhash_sketch", "if values.size else 0.0, 1.0)", ("slots without a key have hash inf and"
     " never match")),
    ("weighted_minhash_sketch", "if values.size else 1.0, 0.0)", ("only for an empty vector,"
     " whose slots have hash inf and never match")),
    ("weighted_minhash_sketch", "if values.size else 0.0, 1.0)", ("slots without a key have hash"
     " inf and never match")),
    ("weighted_minhash_sketch", "if (values.size) or True else values", ("log of an empty array"
     " is the same empty array")),
    # sketch/lsh.py
    ("_check_codes", "nonempty=None)", "nonempty=None is falsy, as nonempty=False"),
    ("__init__", "device=generator_device(None))", ("the default generator's device is the CPU:"
     " device placement on a CPU-only machine")),
    # sketch/hashing.py
    ("_str_keys", "<< np.uint64(33))", ("code points are < 2**21: still an injective packing of"
     " two per word (another hash of the same family)")),
    ("_str_keys", "np.zeros((n, 1), )", ("float64 padding: the code points (< 2**21) are exact"
     " in float64 and cast back to uint64")),
    # sketch/projections.py
    ("random_signs", "generator=generator, )", ("device placement: the default generator's"
     " device is the CPU")),
    # sketch/sampling.py
    ("importance_sample", "torch.rand(p.shape, dtype=None,", ("u ~ U(0, 1] drawn in the default"
     " float32 for float64 p: the same priority-sampling distribution at 2**-24 resolution")),
    # sketch/hashing.py
    ("hash_keys", 'if kind in "XXmMXX":', "no dtype kind is 'X': the same kinds m and M"),
    ("to_sign", ".astype(None)", "astype(None) is float64"),
    # sketch/leverage.py
    ("leverage_scores_from_gram", "torch.where(shifted > 0, 1.0 / shifted, 1.0)", ("shifted <= 0"
     " only in null directions of A (eigenvalue 0 or a rounding below it, ridge underflowed):"
     " their projections are rounding (~eps), so a weight of 1 adds below rounding")),
    ("leverage_scores_from_gram", "g.transpose(+1, -2)", ("the Gram matrix is symmetric and"
     " eigh reads one triangle: for 2-D g it is the same transpose, batched it symmetrises"
     " an already symmetric matrix")),
    # sketch/tensor.py
    ("all_powers", "cache: dict = None", ("power_from_leaves then caches per power: the same"
     " sub-trees computed again, the same outputs")),
    # memory guards' work estimates: coarse bounds by design, not an accounting. The
    # forward peak measured with the torch profiler's memory timeline (float64, 2000 rows,
    # issue 22) is 0.53-0.59 of PolySketch's estimate (degree 3-8; all_powers 0.74-1.16) and
    # 1.0-2.0x SRHT's old 2-width estimate (d_in 64-1000; now 4 widths): one more width
    # moves the estimate by < 1.3x, inside its own error; it changes no result, only how
    # early a call too large for memory is refused.
    ("PolySketch\u01c1_work_width", "return (3 * len(self.leaves) + self.degree + 1)",
     ("guard over-estimate by d_out words per leaf: the estimate is a coarse bound (measured"
      " peaks 0.53-1.16x of it), no result changes")),
    ("SRHT\u01c1_work_width", "return 5 * self.signs.shape[0] * self.padded_dim",
     ("guard over-estimate by one padded transform per row: the estimate is a coarse bound"
      " (measured peaks up to 4 padded widths), no result changes")),
    # inner/linear.py
    ("_inner", 'np.einsum("RW,RW->R"', "einsum labels are case-sensitive letters: the same sum"),
    ("_defect", 'return "KEYS AND VALUES MUST HAVE ONE ENTRY PER SAMPLED KEY"',
     "message text of a deserialisation error"),
    # inner/sampling.py
    ("adaptive_scale", "valid = q[:m] * c < 1.0", ("at q_k c_k = 1 exactly, c_{k+1} = c_k (clipping"
     " item k to 1 changes neither side of the water-filling equation): the same scale")),
    ("_union", "np.argsort(keys, kind=None)", ("the keys of disjoint supports are distinct; equal"
     " keys raise whatever their order")),
    ("_union", "np.argsort(keys, )", "distinct keys: any sort order is the same"),
    ("_union", 'np.argsort(keys, kind="XXstableXX")', "distinct keys: any sort order is the same"),
    ("jl_sketch", "rows = np.arange(m, )[:, None]", "hash_streams casts the streams to uint64"),
    # inner/join.py
    ("_power_of_two_rescaled", "if top == 1.0:", ("a column whose largest magnitude is 1 is left"
     " at 1 instead of 1/2: in range either way, and the correlation is scale-free")),
    ("exact_join_statistics", "assume_unique=None", ("the hashes are distinct: intersect1d's"
     " result is the same without the assumption")),
    # attn/common/exact.py
    ("exact_partial", "chunk_size: int = 1025", "chunk size of the exact reference: rounding only"),
    ("exact_lse", "chunk_size=1025", "chunk size of the exact reference: rounding only"),
    ("_flash_with_lse", "_scaled_dot_product_flash_attention(q, k, v, 0.0, is_causal, scale=",
     "return_debug_mask=False is the kernel's default"),
    ("warn_exact_fallback", "ExactFallbackWarning, stacklevel=3)", ("not testable under mutmut:"
     " its trampoline adds a frame, so stacklevel 3 points at the caller there; outside mutmut"
     " the test of the warnings' stacklevel kills it (applied by hand)")),
    ("warn_no_speedup", "NoSpeedupWarning, stacklevel=3)", ("not testable under mutmut: its"
     " trampoline adds a frame, so stacklevel 3 points at the caller there; outside mutmut the"
     " test of the warnings' stacklevel kills it (applied by hand)")),
    ("_use_flash", "q.shape[-1] <= 257", ("no head size in (256, 257] is a multiple of 8 (the"
     " next condition)")),
    ("exact_partial", "query_positions(N, M, groups, None)", "device placement: CPU-only machine"),
    ("exact_partial", "if (is_causal) and False else M - 1", ("key chunks past a causal chunk's"
     " last visible key are fully masked: each adds out 0, lse -inf to the merge (work only)")),
    ("exact_partial", "if is_causal else M + 1", "min(M, M + 2) = M: the same key chunks"),
    ("exact_partial", "min(M, last_key + 2)", ("at most one more key chunk, past the last visible"
     " key: fully masked, it adds out 0, lse -inf")),
    ("exact_partial", "int(pos_c.min()) <= c1 - 1", ("builds a mask under which every key of the"
     " chunk is visible (all True): the same logits")),
    ("exact_partial", "int(pos_c.min()) < c1 + 1", ("builds a mask under which every key of the"
     " chunk is visible (all True): the same logits")),
    ("flash_lse", "if N >= M:", "inside `if is_causal and N != M`: the same condition"),
    ("flash_lse", "k[:, :, : M + N], v[:, :, : M - N]", ("SDPA's CPU kernel takes the key count"
     " from v: k's rows past M - N are never read (measured: identical out and lse)")),
    ("flash_lse", "merge_partials(diag[0].to(None)", ("type promotion casts the q-dtype part to"
     " float32 inside the merge, as .to() did")),
    ("flash_lse", "prefix[0].to(None), prefix[1])", ("type promotion casts the q-dtype part to"
     " float32 inside the merge, as .to() did")),
    ("_FlashCPU\u01c1backward", "F.pad(x, (0, 1), value=None)", ("pad() is only called with its"
     " default value 0.0, F.pad's default fill")),
    ("_FlashCPU\u01c1backward", "F.pad(x, (0, 1), )", ("pad() is only called with its default"
     " value 0.0, F.pad's default fill")),
    ("_FlashCPU\u01c1backward", "torch.cat((dout.to(None),", "autograd passes dout in out's dtype"),
    ("_FlashCPU\u01c1backward", "_FLASH_CPU_BWD(dout.to(None),", ("autograd passes dout in out's"
     " dtype (and the cat above keeps it)")),
    ("_FlashCPU\u01c1backward", "torch.ones_like(out[..., :2])", ("the kernel reads dout's first"
     " Dv + 1 columns (v's width): the second ones column is never read (measured: identical"
     " gradients)")),
    ("_FlashCPU\u01c1backward", "fold = dlse is not None or bool(dlse.any())", ("folding an"
     " all-zero dlse adds 0 to every dS: the same gradients (dlse is never None: materialised)")),
    ("_FlashCPU\u01c1backward", "lse, 1.0, ctx.is_causal", ("SDPA's CPU backward ignores"
     " dropout_p (measured: identical gradients)")),
    # attn/lev
    ("_window_partial", "dtype=accumulation_dtype(None), device=dev)", ("float32 instead of"
     " float64 for float64 q only: the band mask holds 0 and -inf (exact in float32) and"
     " flash_lse casts a mask to q's dtype")),
    ("universal_set", "device=None))", "device placement: CPU-only machine"),
    ("universal_set", "amax(dim=(+2, -1)", "dims (2, -1) are (-2, -1) of the 4-D keys"),
    # attn/polysketch/polynomial.py
    ("layer_norm_qk", "big = a > 2.0**51", ("rows with max |entry| in (2**50, 2**51] are normed"
     " directly: squares <= 2**102 D stay in float32 range and eps 1e-5 is negligible next to"
     " their variance (measured: the same output to one rounding, float32 and bfloat16)")),
    ("layer_norm_qk", "x / torch.where(big, a, 1.0), 1.0)", ("fills rows that are not big,"
     " whose `large` the final torch.where discards (constant rows norm to 0: finite, no"
     " gradient to x)")),
    # attn/polysketch/method.py
    ("sketched_polynomial_attention", "bounded_inputs(q.to(None), k.to(acc)", ("q' = q * f"
     " promotes to float32 (the factors f are float32): only the overflow bound T changes"
     " (finfo of bfloat16 is float32's; float16's tighter bound shrinks q', k' further, which"
     " e^shrink restores exactly); bf16/fp16 outputs measured equal to float32 rounding, 3.5e-7"
     " relative to the float64 estimator with and without it")),
    # features/activations.py
    ("_correlation", ".clamp(None, 1.0)", ("every rho <= -1 + 8 ulps is snapped to sign(rho) = -1"
     " on the next line, so the lower clamp changes nothing")),
    ("_folded", "((degree + parity) % 2)", "(d + p) % 2 == (d - p) % 2 for p in {0, 1}"),
    ("_radial", "step = max(1, 2 * 22 // x.numel())", ("chunk size of the rows (each row's"
     " quadrature is independent): memory and speed only")),
    ("_symmetric", "torch.zeros(2, dtype=torch.float64), pos", ("a duplicated break 0 adds an"
     " empty panel (zero weight, nodes at 0): differs only for activations non-finite at 0,"
     " which the 2-D quadrature rejects either way (log|z|: no convergence)")),
    ("ActivationSketchMap\u01c1__init__", 'kernel="NNGP",', ("the map only tests kernel == 'ntk'"
     " (any other value is the NNGP path); callers validate and pass kernel explicitly")),
]

_STRING = re.compile(r"""[rbf]*("[^"]*"|'[^']*')""")


def _message_only(diff: str) -> bool:
    """Whether a mutant changes only the text of an error or warning message.

    Such mutants are counted apart: the tests match the argument's name in the
    message (``pytest.raises(..., match=name)``), which padding of the name
    (``"XXnameXX"``) or changes of the rest of the text do not alter. The name
    given to a ``check_*`` validator counts as message text.
    """
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+")]
    if len(removed) != 1 or len(added) != 1:
        return False
    old = removed[0].strip()
    new = added[0].replace("(None)", '("")').replace("(None,", '("",').strip()
    if _STRING.sub('""', old) != _STRING.sub('""', new):
        return False
    return (bool(re.match(r"""(raise |[rbf]*["'])""", old)) or "Error(" in old or "warn(" in old
            or re.search(r"check_\w+\(", old) is not None)


def _glob_tests(root: Path, patterns: list[str]) -> list[str]:
    out = []
    for p in patterns:
        hits = sorted(str(h.relative_to(root)) for h in root.glob(p))
        out.extend(hits)
    return out


def _prepare(workdir: Path, modules: list[str], tests: list[str]) -> list[str]:
    if workdir.exists():
        shutil.rmtree(workdir)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / PKG, workdir / PKG, ignore=ignore)
    shutil.copytree(REPO / "tests", workdir / "tests", ignore=ignore)
    test_paths = _glob_tests(workdir, tests)
    if not test_paths:
        raise SystemExit(f"no test files match {tests}")
    only = [f"{PKG}/{m}" for m in modules]
    # The repository's pytest settings (markers, addopts) plus the mutmut table.
    text = (REPO / "pyproject.toml").read_text()
    text += "\n[tool.mutmut]\n" + "\n".join([
        f'source_paths = ["{PKG}"]',
        f"only_mutate = {json.dumps(only)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(test_paths)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]',
    ]) + "\n"
    (workdir / "pyproject.toml").write_text(text)
    return test_paths


def _statuses(workdir: Path) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in sorted((workdir / "mutants").rglob("*.meta")):
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def _show(workdir: Path, name: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mutmut", "show", name], check=False,
                       cwd=workdir, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    return "\n".join(ln for ln in lines if ln.startswith(("-", "+")) and not
                     ln.startswith(("---", "+++")))


def _equivalent(name: str, diff: str) -> str | None:
    func = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+")]
    for f, line, reason in EQUIVALENT:
        if func.endswith(f) and any(line in a for a in added):
            return reason
    return None


def _device_only(diff: str) -> bool:
    """Whether a mutant changes only a ``device=`` argument (None or dropped): no effect
    on a CPU-only machine, where every tensor is on the CPU anyway."""
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+")]
    if len(removed) != 1 or len(added) != 1:
        return False

    def strip(line):
        line = re.sub(r"\.to\([\w.]+\.device\)", ".to(None)", line)
        return re.sub(r",?\s*device=[\w.\"]+", "", line).replace(", )", ")").replace(" ", "")

    return strip(removed[0]) == strip(added[0]) and "device" in removed[0]


# mutmut statuses of a test run whose process died (SDPA's CPU kernel raises SIGFPE on an
# empty key set, for one): the suite fails visibly, so these count as detected.
_CRASHED = ("segfault", "suspicious")
# a mutant that runs past mutmut's time limit (an endless loop, a huge allocation): the suite
# fails visibly by its timeout, so it counts as detected (PIT's and Stryker's convention).
_TIMEOUT = ("timeout",)


def classify(res: dict) -> dict:
    """Split a target's not-killed mutants into crashed and timed out (both detected: the
    test process died or ran past its time limit), equivalent (``EQUIVALENT``),
    error-message text, device placement and the rest, and score it."""
    counts = Counter(res["counts"])
    survivors, equivalent, message, device, crashed, timed_out = [], [], [], [], [], []
    for entry in res["not_killed"]:
        reason = _equivalent(entry["mutant"], entry["diff"])
        if entry["status"] in _CRASHED:
            crashed.append(entry)
        elif entry["status"] in _TIMEOUT:
            timed_out.append(entry)
        elif entry["status"] != "survived":
            survivors.append(entry)
        elif reason is not None:
            equivalent.append({**entry, "reason": reason})
        elif _message_only(entry["diff"]):
            message.append(entry)
        elif _device_only(entry["diff"]):
            device.append(entry)
        else:
            survivors.append(entry)
    scored = sum(counts[s] for s in ("killed", "survived", "no tests", *_CRASHED, *_TIMEOUT))
    denominator = scored - len(equivalent) - len(message) - len(device)
    detected = counts["killed"] + len(crashed) + len(timed_out)
    return {**res, "equivalent": equivalent, "message_only": message, "device_only": device,
            "crashed": crashed, "timed_out": timed_out, "survivors": survivors,
            "score": detected / denominator if denominator else None}


_GENERATE = """
import os
from mutmut.__main__ import (copy_also_copy_files, copy_src_dir, create_mutants,
                             set_mutant_under_test, setup_source_paths)
set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
"""


def _sample_mutants(workdir: Path, env: dict, sample: int, seed: int) -> tuple[list[str], int]:
    """Generate the target's mutants (mutmut's own generation step, no test run) and draw
    ``sample`` of their names uniformly without replacement (``random.Random(seed)``)."""
    subprocess.run([sys.executable, "-c", _GENERATE], check=True, cwd=workdir, env=env,
                   capture_output=True, text=True)
    names = sorted(_statuses(workdir))
    return sorted(random.Random(seed).sample(names, min(sample, len(names)))), len(names)


def run_target(name: str, workdir: Path, jobs: int, sample: int | None = None,
               seed: int = 0) -> dict:
    modules, tests = TARGETS[name]
    test_paths = _prepare(workdir, modules, tests)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    t0 = time.time()
    chosen, total = ([], None) if sample is None else _sample_mutants(workdir, env, sample, seed)
    r = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs),
                        *chosen], check=False, cwd=workdir, env=env, capture_output=True,
                       text=True)
    wall = time.time() - t0
    statuses = _statuses(workdir)
    if sample is not None:
        statuses = {m: st for m, st in statuses.items() if m in set(chosen)}
    not_killed = [{"mutant": m, "status": st, "diff": _show(workdir, m)}
                  for m, st in sorted(statuses.items()) if st != "killed"]
    return classify({
        "modules": modules,
        "tests": test_paths,
        "mutants": len(statuses),
        "sample": None if sample is None else {"of": total, "seed": seed},
        "counts": dict(Counter(statuses.values())),
        "not_killed": not_killed,
        "wall_s": round(wall, 1),
        "mutmut_exit": r.returncode,
        "mutmut_tail": (r.stdout + r.stderr)[-2000:] if r.returncode else "",
    })


def _print(name: str, res: dict) -> None:
    c = res["counts"]
    score = res["score"]
    print(f"{name:20s} mutants {res['mutants']:5d}  killed {c.get('killed', 0):5d}  "
          f"survived {c.get('survived', 0):4d} (equivalent {len(res['equivalent'])}, "
          f"message text {len(res['message_only'])}, device {len(res['device_only'])})  "
          f"crashed {len(res.get('crashed', []))}  "
          f"timeout {c.get('timeout', 0)}  no tests {c.get('no tests', 0)}  "
          f"score {score if score is None else round(score, 3)}  ({res['wall_s']:.0f} s)"
          + (f"  sample of {res['sample']['of']}" if res.get("sample") else ""),
          flush=True)


def _write(out: Path | None, results: dict) -> None:
    if out is None:
        return
    import mutmut

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tool": f"mutmut {mutmut.__version__}", "targets": results},
                              indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated subset of {', '.join(TARGETS)}")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kernelsketch-mutation"))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--sample", type=int, default=None,
                    help="run a uniform random sample of this many mutants per target")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="JSON summary (merged into an existing file)")
    ap.add_argument("--reclassify", action="store_true",
                    help="re-apply EQUIVALENT and the categories to --out without running")
    args = ap.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    results = {}
    if args.out and args.out.exists():
        results = json.loads(args.out.read_text()).get("targets", {})
    if args.reclassify:
        for name in names:
            if name in results:
                res = results[name]
                if "not_killed" not in res:  # written before not_killed was kept
                    res["not_killed"] = [{k: e[k] for k in ("mutant", "status", "diff")}
                                         for key in ("survivors", "equivalent", "message_only",
                                                     "device_only", "crashed", "timed_out")
                                         for e in res.get(key, [])]
                results[name] = classify(res)
                _print(name, results[name])
        names = []
    for name in names:
        results[name] = run_target(name, args.workdir / name, args.jobs, args.sample,
                                   args.sample_seed)
        _print(name, results[name])
        if results[name]["mutmut_exit"]:
            print(results[name]["mutmut_tail"], flush=True)
        _write(args.out, results)
    if args.reclassify:
        _write(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
