"""Time and peak GPU memory of excise's main steps on CUDA: the check a GPU owner runs.

Loads the default model (or ``--model``: a folder or hub id) in ``--dtype`` on one GPU, or split
over several with ``--device-map auto``, then measures, each on its own: the key statistics of
the default edit layer (text sample generated and ``C`` accumulated, fresh cache), a rank-one edit
per fact (``rome``, undone after), a causal trace, and a verification with small budgets. For
every step it prints the wall time and the peak of ``torch.cuda.max_memory_allocated`` (the
largest over the devices; the model's own weights included). Without a CUDA device it says so
and exits with status 0 before loading anything, so CI without a GPU passes over it.

    python bench/gpu.py [--model NAME] [--dtype bfloat16] [--device-map auto] [--facts 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager

NO_GPU = "bench/gpu.py: no CUDA device here, nothing measured; run it on a machine with a GPU."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="folder or hub id (default: the bundled default model)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device-map", default=None, help="e.g. auto: split over the visible GPUs")
    parser.add_argument("--facts", type=int, default=2, help="known facts edited, traced and verified")
    parser.add_argument("--stat-sequences", type=int, default=64, help="text sequences for C")
    parser.add_argument("--trace-samples", type=int, default=3, help="noise samples of the trace")
    parser.add_argument("--relearn-steps", type=int, default=5, help="budget of verify's relearning")
    return parser.parse_args(argv)


@contextmanager
def measured(name: str, rows: list, count: int = 1):
    """Append ``(name, seconds per each of count, peak GiB)`` for the body to ``rows``; the peak is
    the largest ``max_memory_allocated`` over the devices, counted from the start of the body."""
    import torch

    devices = range(torch.cuda.device_count())
    for device in devices:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield
    for device in devices:
        torch.cuda.synchronize(device)
    peak = max(torch.cuda.max_memory_allocated(device) for device in devices) / 2**30
    rows.append((name, (time.perf_counter() - start) / count, peak))


def run(args, rows: list, stats_cache: str) -> str:
    """Load, pick known facts and time each step into ``rows``; returns a one-line description.

    Once the model is loaded, ``EXCISE_CACHE`` points to ``stats_cache`` (empty), so the key
    statistics are computed rather than read from the user's cache."""
    import torch

    from excise.check import known_facts
    from excise.edit import rome
    from excise.edit.rank_one import default_layer
    from excise.edit.stats import SampleSpec, key_stats
    from excise.facts import load_facts
    from excise.locate import causal_trace
    from excise.model import load_model
    from excise.verify import verify

    dtype = getattr(torch, args.dtype)
    placement = {"device_map": args.device_map} if args.device_map else {"device": "cuda"}
    with measured("load model", rows):
        model = load_model(args.model, dtype=dtype, **placement)
    os.environ["EXCISE_CACHE"] = stats_cache
    facts = known_facts(model, load_facts("all"), args.facts)
    if not facts:
        raise SystemExit("bench/gpu.py: the model knows none of the bundled facts; pass another --model")
    layer = default_layer(model)
    with measured(f"key statistics (layer {layer}, {args.stat_sequences} sequences)", rows):
        key_stats(model, [layer], SampleSpec(n_sequences=args.stat_sequences), progress=False)
    with measured(f"rome, per edit (mean of {len(facts)}; statistics cached)", rows, len(facts)):
        for fact in facts:
            rome(model, fact, progress=False).undo(model)
    with measured(f"causal trace, per fact ({args.trace_samples} noise samples)", rows, len(facts)):
        for fact in facts:
            causal_trace(model, fact, samples=args.trace_samples, progress=False)
    edit = rome(model, facts[0], progress=False)
    with measured(f"verify 1 fact (logit lens, formats, relearn {args.relearn_steps} steps)", rows):
        verify(model, facts[0], probes=("logit_lens", "formats", "relearn"), relearn_steps=args.relearn_steps,
               fluency_tokens=0, perplexity=False, progress=False)
    edit.undo(model)
    gpus = ", ".join(torch.cuda.get_device_name(d) for d in range(torch.cuda.device_count()))
    return (f"{getattr(model, 'excise_name', args.model)} in {args.dtype} on {gpus} "
            f"({model.cfg.n_layers} layers, d_model {model.cfg.d_model}, d_mlp {model.cfg.d_mlp}); "
            f"torch {torch.__version__}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    rows: list = []
    with tempfile.TemporaryDirectory(prefix="excise-gpu-bench-") as stats_cache:
        about = run(args, rows, stats_cache)
    print(about)
    print(f"{'step':60} {'seconds':>9} {'peak GiB':>9}")
    for name, seconds, peak in rows:
        print(f"{name:60} {seconds:9.2f} {peak:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
