"""How the cost of key statistics, a rank-one edit and a causal trace grows with the model.

    python bench/scaling.py [--shapes 135M,360M,1B] [--value-steps 3] [--trace-samples 2]
        [--sample 16x64]

Random Llama-family models (the default model's tokenizer, float32, CPU) of three real shapes:
SmolLM2-135M (576 wide, 30 layers), SmolLM2-360M (960 wide, 32 layers) and Llama-3.2-1B (2048
wide, 16 layers, with SmolLM2's 49,152-token vocabulary). Each step runs in a fresh process, so
its peak memory (resident set high-water mark above the process with the model built) is its own:

* **key statistics** at the default edit layer, from a generated text sample of ``--sample``
  sequences x tokens (the editors default to 64 x 96);
* **rank-one edit** (``excise.rome``, default layer) with the statistics cached, its value
  optimisation fixed at ``--value-steps`` steps (objective "replace", which a random model never
  meets early; forgetting a real fact takes 5-25 steps);
* **causal trace** of the MLP site with ``--trace-samples`` noise samples (the default is 10).

A random model knows no fact, so only the cost is measured. The growth exponent is the slope of
log(seconds) and log(peak memory) against log(parameters) over the shapes; the last lines
extrapolate to 1B and 8B parameters with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "135M": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536),
    "360M": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560),
    "1B": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
}
STEPS = ("stats", "rome", "trace")


def build(shape: str):
    """A random Llama model of ``shape`` with the default model's tokenizer, as a bridge."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from excise.bridge_params import one_parameter_per_weight
    from excise.model import ensure_default_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model(progress=False))
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         **SHAPES[shape])
    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(config).eval()
    bridge = TransformerBridge.boot_transformers("llama", hf_model=hf_model, tokenizer=tokenizer,
                                                 device="cpu", dtype=torch.float32)
    bridge.eval()
    one_parameter_per_weight(bridge)
    bridge.excise_source, bridge.excise_name = f"random-{shape}", f"random-{shape}"
    return bridge, sum(p.numel() for p in hf_model.parameters())


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_step(shape: str, step: str, args) -> dict:
    """Build the model, run one step, return its seconds and peak memory above the built model."""
    from excise.edit.rank_one import default_layer, rome
    from excise.edit.stats import SampleSpec, key_stats
    from excise.edit.value import ValueSettings
    from excise.facts import Fact
    from excise.locate import causal_trace

    model, n_params = build(shape)
    fact = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris")
    n_sequences, length = (int(v) for v in args.sample.split("x"))
    spec = SampleSpec(n_sequences=n_sequences, length=length)
    layer = default_layer(model)
    if step == "rome":  # statistics cached first: the edit alone is timed
        key_stats(model, [layer], spec, progress=False)
    built = peak_mb()
    start = time.perf_counter()
    if step == "stats":
        key_stats(model, [layer], spec, progress=False)
    elif step == "rome":  # "replace" on a random model runs every value step
        rome(model, fact, objective="replace", new_target=" Rome",
             settings=ValueSettings(steps=args.value_steps), sample=spec, progress=False)
    else:
        causal_trace(model, fact, site="mlp", samples=args.trace_samples, progress=False)
    seconds = time.perf_counter() - start
    return {"shape": shape, "step": step, "params": n_params, "seconds": seconds,
            "peak_mb": max(0.0, peak_mb() - built), "model_mb": built}


def growth(rows: list[dict], key: str) -> float:
    """Least-squares slope of log(key) against log(params)."""
    xs = [math.log(r["params"]) for r in rows]
    ys = [math.log(max(r[key], 1e-9)) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--value-steps", type=int, default=3)
    parser.add_argument("--trace-samples", type=int, default=2)
    parser.add_argument("--sample", default="16x64", help="text sample for the key statistics, N x TOKENS")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_step(*args.one, args)))
        return
    env = {**os.environ, "EXCISE_CACHE": os.environ.get("EXCISE_CACHE") or tempfile.mkdtemp(prefix="scaling-")}
    default_cache = os.path.expanduser("~/.cache/excise")
    if "EXCISE_CACHE" not in os.environ and os.path.isdir(os.path.join(default_cache, "models")):
        os.symlink(os.path.join(default_cache, "models"), os.path.join(env["EXCISE_CACHE"], "models"))
    rows = []
    print(f"value steps {args.value_steps}, trace samples {args.trace_samples}, text sample {args.sample}; "
          "float32, CPU, each step in its own process", flush=True)
    print("| shape | parameters | step | seconds | peak MB above the model | model process MB |")
    print("|---|---|---|---|---|---|", flush=True)
    for shape in args.shapes.split(","):
        for step in STEPS:
            cmd = [sys.executable, __file__, "--one", shape, step, "--value-steps", str(args.value_steps),
                   "--trace-samples", str(args.trace_samples), "--sample", args.sample]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"| {shape} | | {step} | failed: {out.stderr.strip().splitlines()[-1]} | | |", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"| {shape} | {row['params'] / 1e6:.0f}M | {step} | {row['seconds']:.1f} | "
                  f"{row['peak_mb']:.0f} | {row['model_mb']:.0f} |", flush=True)
    print("\n| step | time exponent | memory exponent | seconds at 1B | seconds at 8B |")
    print("|---|---|---|---|---|")
    for step in STEPS:
        these = [r for r in rows if r["step"] == step]
        if len(these) < 2:
            continue
        t_exp, m_exp = growth(these, "seconds"), growth(these, "peak_mb")
        last = these[-1]
        at = {n: last["seconds"] * (n / last["params"]) ** t_exp for n in (1e9, 8e9)}
        print(f"| {step} | {t_exp:.2f} | {m_exp:.2f} | {at[1e9]:.0f} | {at[8e9]:.0f} |")


if __name__ == "__main__":
    main()
