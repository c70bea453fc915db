"""Speed of excise's locators against TransformerLens, measured in the same process.

Prints, for each activation-patching site, the wall time of ``transformer_lens.patching`` (one
forward per patch) and of :func:`excise.locate.activation_patch` on the same clean/corrupted pair
of the default model, their ratio and the maximum absolute difference of the results; then a full
causal trace (three sites, all layers and positions, 10 noise samples) against TL's
``get_act_patch_block_every`` (timed as its three sweeps), and attribution patching against one
forward+backward pass. TL's sweeps cost the same per patch, so by default they run on a subset of
layers (``--layers``) and their full-grid time is extrapolated linearly; ``--full`` runs them all.

    EXCISE_CACHE=... python bench/locate_speed.py [--full] [--layers 0,10,20,29]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

CLEAN, CORRUPTED = "The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"


def main() -> None:
    import transformer_lens.patching as tlp

    from excise.facts import Fact
    from excise.locate import activation_patch, attribution_patch, causal_trace
    from excise.model import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="run TL on every layer")
    parser.add_argument("--layers", default="0,15,29", help="layers TL runs on (without --full)")
    parser.add_argument("--skip-trace", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(device="cpu")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if args.full else [int(x) for x in args.layers.split(",")]
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    assert clean.shape == corrupted.shape, (clean.shape, corrupted.shape)
    answer, wrong = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    _, cache = model.run_with_cache(clean)
    lc, lr = model(clean)[0, -1], model(corrupted)[0, -1]
    ld_c, ld_r = lc[answer] - lc[wrong], lr[answer] - lr[wrong]

    def metric(logits):
        return ((logits[0, -1, answer] - logits[0, -1, wrong]) - ld_r) / (ld_c - ld_r)

    pos = clean.shape[1]
    print(f"default model, {pos} tokens, {n_layers} layers, {torch.get_num_threads()} threads; "
          f"TL on layers {layers if not args.full else 'all'}")
    print(f"{'site':10} {'TL s (full grid)':>16} {'excise s':>9} {'ratio':>7} {'max |diff|':>11}")
    tl_block = 0.0
    sites = [("resid", "resid_pre", tlp.layer_pos_patch_setter, "pos"),
             ("attn", "attn_out", tlp.layer_pos_patch_setter, "pos"),
             ("mlp", "mlp_out", tlp.layer_pos_patch_setter, "pos"),
             ("head", "z", tlp.layer_head_vector_patch_setter, "head")]
    for site, act, setter, axis in sites:
        width = pos if axis == "pos" else model.cfg.n_heads
        index = pd.DataFrame({"layer": [x for x in layers for _ in range(width)],
                              axis: [i for _ in layers for i in range(width)]})
        start = time.perf_counter()
        ref = tlp.generic_activation_patch(model, corrupted, cache, metric, setter, act, index_df=index)
        tl = (time.perf_counter() - start) * n_layers / len(layers)
        start = time.perf_counter()
        ours = activation_patch(model, clean, corrupted, answer, wrong, site=site, progress=False)
        mine = time.perf_counter() - start
        diff = float((ours.scores[layers].flatten() - ref.cpu()).abs().max())
        if site != "head":
            tl_block += tl
        print(f"{site:10} {tl:16.1f} {mine:9.1f} {tl / mine:7.1f} {diff:11.2e}")

    with torch.enable_grad():
        start = time.perf_counter()
        out = model(corrupted)[0, -1, answer]
        out.backward()
        fwd_bwd = time.perf_counter() - start
        start = time.perf_counter()
        attribution_patch(model, clean, corrupted, answer, wrong, site="neuron", progress=False)
        attribution_patch(model, clean, corrupted, answer, wrong, site="head", progress=False)
        atp = time.perf_counter() - start
    print(f"attribution patching (heads + neurons, two calls): {atp:.1f} s = "
          f"{atp / fwd_bwd:.1f}x one forward+backward ({fwd_bwd:.2f} s)")
    if args.skip_trace:
        return
    fact = Fact(id="eiffel", subject="The Eiffel Tower", prompt="{} is located in the city of",
                target=" Paris")
    start = time.perf_counter()
    for site in ("resid", "mlp", "attn"):
        causal_trace(model, fact, site=site, samples=10, progress=False)
    trace = time.perf_counter() - start
    print(f"full causal trace (3 sites x {n_layers} layers x all positions x 10 samples): {trace:.1f} s; "
          f"TL get_act_patch_block_every (sum of its three sweeps): {tl_block:.1f} s; "
          f"ratio TL/trace = {tl_block / trace:.2f}")


if __name__ == "__main__":
    main()
