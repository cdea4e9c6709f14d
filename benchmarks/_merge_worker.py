"""One merge in its own process, for ``bench_merge.py`` (which measures its wall time and peak RSS).

    python benchmarks/_merge_worker.py SPEC.json

SPEC holds ``tool`` (``ours``, ``ours_yaml``, ``ours_sweep``, ``mergekit``, ``fusionbench``, ``probe``),
``method``, ``base``, ``models``, ``out``, ``params``, ``threads`` and ``result`` (a JSON path
written at the end with the in-process merge seconds). Only the standard library and torch are
imported at the top: the peers run under a python that has mergekit / fusion-bench but not
hhh-bench, and each tool imports only its own code.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Names of the embedding table and LM head in the synthetic Llama checkpoints: TSV-M, Iso-C and
# Iso-CTS merge them by the mean in hhh-bench (embeddings: mean, the default), so FusionBench gets
# them as exclude_keys.
EMBEDDING_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from hhh_bench.merging import merge_models

    res = merge_models(
        spec["method"], spec["base"], spec["models"], spec["out"], progress=False, **spec["params"]
    )
    return {"cache_hits": res.cache_hits, "cache_misses": res.cache_misses}


def run_ours_yaml(spec: dict[str, Any]) -> dict[str, Any]:
    """``hhh-bench merge CONFIG OUT_DIR`` on the mergekit YAML that mergekit runs (spec["config"])."""
    from hhh_bench.mergeyaml import run

    path = Path(spec["out"] + ".yml")
    Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec["config"], indent=2))  # JSON is YAML
    run(str(path), spec["out"], progress=False)
    return {}


def run_ours_sweep(spec: dict[str, Any]) -> dict[str, Any]:
    """The same merge at each ``scaling`` in spec["scalings"], with the sweep cache; each output
    is removed once written (only the last is kept, for inspection)."""
    from hhh_bench.merging import merge_models

    hits = misses = 0
    per_merge = []
    out = Path(spec["out"])
    for i, s in enumerate(spec["scalings"]):
        t = time.perf_counter()
        target = out.with_name(f"{out.name}-{i}")
        res = merge_models(
            spec["method"],
            spec["base"],
            spec["models"],
            target,
            progress=False,
            cache_dir=spec["cache_dir"],
            scaling=s,
            **spec["params"],
        )
        per_merge.append(round(time.perf_counter() - t, 2))
        hits, misses = hits + res.cache_hits, misses + res.cache_misses
        if i + 1 < len(spec["scalings"]):
            shutil.rmtree(target)
        else:
            target.rename(out)
    return {"cache_hits": hits, "cache_misses": misses, "per_merge_s": per_merge}


def run_mergekit(spec: dict[str, Any]) -> dict[str, Any]:
    """mergekit's python API (what ``mergekit-yaml`` calls): MergeConfiguration + run_merge."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = spec.get("config") or {
        "merge_method": spec["method"],
        "base_model": spec["base"],
        "models": [{"model": m, "parameters": spec["model_params"]} for m in spec["models"]],
        "parameters": spec["params"],
        "dtype": "float32",  # compute dtype, as ours (bf16 inputs upcast, rounded once at the end)
        "out_dtype": "bfloat16",
    }
    Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
    Path(spec["out"] + ".yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    options = MergeOptions(
        copy_tokenizer=False,  # the synthetic checkpoints have no tokenizer
        random_seed=0,
        quiet=True,
        num_threads=spec.get("threads"),
        out_shard_size=spec["shard_params"],
    )
    options.apply_global_options()
    run_merge(MergeConfiguration.model_validate(config), spec["out"], options=options)
    return {}


def run_fusionbench(spec: dict[str, Any]) -> dict[str, Any]:
    """FusionBench's merge function on in-memory state dicts, as its algorithm class runs it: task
    vectors θ_t − θ0 (``state_dict_sub``, one finetuned model loaded at a time), the method's
    function, then θ0 + τ_m (λ = 1: TSV-M's ``alpha`` unset, Iso's ``scaling_factor`` 1.0).

    - ``tsv``: ``compute_and_sum_svd_mem_reduction`` in the models' dtype (as
      ``TaskSingularVectorMerging``).
    - ``iso_c``, ``iso_cts`` (``common_space_fraction`` 0.8): ``iso_c`` / ``iso_cts`` of
      ``isotropic_merging.iso_utils`` on float32 copies (torch's SVD refuses bf16, so a bf16
      model pool cannot run them as they are); the output is rounded to bf16, as ours.
    """
    import torch
    from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_sub
    from safetensors.torch import load_file, save_file

    method = spec["method"]
    if method in ("fisher", "regmean"):
        return _fusionbench_data_aware(spec)
    upcast = method != "tsv"

    def load(folder: str) -> dict[str, Any]:
        sd = load_file(str(Path(folder) / "model.safetensors"))
        return {k: v.float() for k, v in sd.items()} if upcast else sd

    base = load(spec["base"])
    task_vectors = []
    for m in spec["models"]:
        ft = load(m)
        task_vectors.append(state_dict_sub(ft, base))
        del ft
    with torch.no_grad():
        if method == "tsv":
            from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
                compute_and_sum_svd_mem_reduction,
            )

            merged_tv = compute_and_sum_svd_mem_reduction(
                task_vectors, exclude_keys=list(EMBEDDING_KEYS), accelerator="cpu"
            )
        elif method == "iso_c":
            from fusion_bench.method.isotropic_merging.iso_utils import iso_c

            merged_tv = iso_c(task_vectors, accelerator="cpu", exclude_keys=list(EMBEDDING_KEYS))
        elif method == "iso_cts":
            from fusion_bench.method.isotropic_merging.iso_utils import iso_cts

            merged_tv = iso_cts(
                task_vectors,
                common_space_fraction=0.8,
                accelerator="cpu",
                exclude_keys=list(EMBEDDING_KEYS),
            )
        elif method in ("consensus_ta", "consensus_ties"):
            merged_tv = _fusionbench_consensus(method, base, task_vectors)
        else:
            raise ValueError(f"no FusionBench run for {method!r}")
        merged = state_dict_add(merged_tv, base)
    if upcast:
        merged = {k: v.to(torch.bfloat16) for k, v in merged.items()}
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out / "model.safetensors"))
    shutil.copy2(Path(spec["base"]) / "config.json", out / "config.json")
    return {}


TALL_LAMBDA, MIN_AGREEMENT, TIES_DENSITY = 0.6, 2, 0.2


def _fusionbench_consensus(method: str, base: dict, task_vectors: list[dict]) -> dict:
    """Consensus merging with FusionBench's TALL-mask functions (``tall_mask.utils``:
    ``generate_task_masks`` per task, ``construct_consensus_mask``), over the whole model
    flattened into one vector as the TALL authors' code does. The multi-task vector is Σ τ_t
    (``consensus_ta``) or TIES's (``ties_merging_utils.ties_merging``, top 20% per task over the
    whole model, ``dis-sum``: ``consensus_ties`` with ``scope: global``). FusionBench 0.2.33 has
    these functions but no algorithm class that calls them; this is the peer check's composition
    (benchmarks/peercheck_consensus_pcb.py)."""
    import torch
    from fusion_bench.method.tall_mask import utils as tu

    keys = list(base)
    flat = torch.stack([torch.cat([tv[k].flatten() for k in keys]) for tv in task_vectors])
    ptm = torch.cat([base[k].flatten() for k in keys])
    if method == "consensus_ta":
        merged = flat.sum(dim=0)
    else:
        from fusion_bench.method.ties_merging.ties_merging_utils import ties_merging

        merged = ties_merging(flat.clone(), reset_thresh=100 * TIES_DENSITY, merge_func="dis-sum")
    masks = tu.generate_task_masks(flat, flat + ptm, ptm, tv=merged, tall_mask_lambda=TALL_LAMBDA)
    given = {f"task{t}": {"flat": m} for t, m in enumerate(masks)}
    tu.load_tall_mask = lambda remove_keys, ptm_check, config: given
    keep = tu.construct_consensus_mask({"flat": ptm}, MIN_AGREEMENT, None, [])
    merged = merged * keep
    out, at = {}, 0
    for k in keys:
        n = base[k].numel()
        out[k] = merged[at : at + n].view_as(base[k])
        at += n
    return out


def _fusionbench_data_aware(spec: dict[str, Any]) -> dict[str, Any]:
    """Fisher merging and RegMean given each model's statistics (the files ours reads):
    FusionBench's ``merging_with_fisher_weights`` (normalised, ε 1e-6, equal coefficients) and
    ``merging_with_regmean_weights`` (α 0.9) on the models' float32 weights, as its algorithm
    classes call them once the statistics exist; tensors without a Gram matrix (embeddings,
    norms) are averaged, as its RegMean does for parameters outside its linear layers."""
    import torch
    from safetensors.torch import load_file, save_file

    models = [
        {k: v.float() for k, v in load_file(str(Path(m) / "model.safetensors")).items()}
        for m in spec["models"]
    ]
    stats = [load_file(p) for p in spec["statistics"]]
    params = {k: [sd[k] for sd in models] for k in models[0]}
    with torch.no_grad():
        if spec["method"] == "fisher":
            from fusion_bench.method.fisher_merging.fisher_merging import (
                merging_with_fisher_weights,
            )

            fishers = [
                {k[len("fisher/") :]: v for k, v in s.items() if k.startswith("fisher/")}
                for s in stats
            ]
            merged = merging_with_fisher_weights(
                params,
                fishers,
                torch.ones(len(models)) / len(models),
                normalize_fisher_weight=True,
                minimal_fisher_weight=1e-6,
            )
        else:
            from fusion_bench.method.regmean.regmean import merging_with_regmean_weights

            grams = [
                {
                    k[len("gram/") : -len(".weight")]: v
                    for k, v in s.items()
                    if k.startswith("gram/")
                }
                for s in stats
            ]
            linear = {k + ".weight" for k in grams[0]}
            merged = merging_with_regmean_weights(
                {k: v for k, v in params.items() if k in linear},
                grams,
                reduce_non_diagonal_ratio=0.9,
                weight_transpose=True,
            )
            for k, v in params.items():
                if k not in linear:
                    merged[k] = torch.stack(v).mean(dim=0)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in merged.items()},
        str(out / "model.safetensors"),
    )
    shutil.copy2(Path(spec["base"]) / "config.json", out / "config.json")
    return {}


def run_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Which peers this python can import, with their versions."""
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist, mod in (("mergekit", "mergekit.merge"), ("fusion-bench", "fusion_bench")):
        try:
            if dist == "fusion-bench":
                import_module("fusion_bench.method.task_singular_vector.utils.TSVM_utils")
                import_module("fusion_bench.method.isotropic_merging.iso_utils")
            else:
                import_module(mod)
            found[dist] = version(dist)
        except (ImportError, PackageNotFoundError) as e:
            found[dist] = None
            print(f"{dist}: not importable ({type(e).__name__}: {e})", file=sys.stderr)
    return {"peers": found}


TOOLS = {
    "ours": run_ours,
    "ours_yaml": run_ours_yaml,
    "ours_sweep": run_ours_sweep,
    "mergekit": run_mergekit,
    "fusionbench": run_fusionbench,
    "probe": run_probe,
}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    t = time.perf_counter()
    info = TOOLS[spec["tool"]](spec)
    info["merge_s"] = round(time.perf_counter() - t, 3)
    # This process's peak RSS since its exec (the kernel's high-water mark of its own memory
    # map). wait4's ru_maxrss would also count the parent's RSS at the fork.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            info["vmhwm_bytes"] = int(line.split()[1]) * 1024
    if spec.get("result"):
        Path(spec["result"]).write_text(json.dumps(info))


if __name__ == "__main__":
    main()
