"""Diagnostics wiring: stage=diagnose, every merge of the merge stage (cached across a sweep over
scaling, switchable off), the diagnostics store and the report's heatmaps and tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hhh_bench.core.paths import conf_dir
from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer
from hhh_bench.stages.common import load_option
from hhh_bench.tracking.store import read_diagnostics

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "eval" / "results_fixture.jsonl"
SPEC = TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and two sets of three specialists: small dense deltas, and deltas with sparse
    large entries in layer 1 (heavy tails there)."""
    root = tmp_path_factory.mktemp("diag_stages")
    tok = build_word_tokenizer(["a", "b", "c", "d", "e", "f"])
    build_tiny_model(SPEC, tok, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    sets = {}
    for kind in ("dense", "heavy"):
        paths = []
        for i in range(3):
            m = build_tiny_model(SPEC, tok, seed=0)
            with torch.no_grad():
                for n, p in m.named_parameters():
                    d = 0.01 * torch.randn(p.shape, generator=g)
                    if kind == "heavy" and ".layers.1." in n:
                        d[torch.rand(p.shape, generator=g) < 0.05] = 0.3
                    p.add_(d)
            m.save_pretrained(root / f"{kind}{i}")
            paths.append(str(root / f"{kind}{i}"))
        sets[kind] = paths
    return str(root / "base"), sets


def make_cfg(root: Path, method: str = "tsv", **engine):
    """The merge stage's config from the shipped YAMLs (no Hydra): merge=<method>, the engine's
    defaults (diagnostics on) and ``engine`` overrides."""
    cfg = OmegaConf.create(
        {
            "root": str(root),
            "name": "diag-test",
            "seed": 0,
            "train": {"name": "dpo"},
            "data": {"noise": {"flip_rate": 0.0}},
            "merge": load_option("merge", method),  # with what it extends (merge_common.yaml)
            "merge_engine": load_option("merge_engine", "default"),
        }
    )
    cfg.merge_engine.progress = False
    for k, v in engine.items():
        cfg.merge_engine[k] = v
    return cfg


def test_engine_config_documents_the_switch():
    engine = OmegaConf.load(conf_dir() / "merge_engine" / "default.yaml")
    assert engine.diagnostics is True and engine.diagnostics_top_k is None
    assert list(engine.diagnostics_tail_sigmas) == [3.0, 5.0]


def test_every_merge_writes_diagnostics_computed_once_per_inputs(models, tmp_path, monkeypatch):
    """A sweep over scaling (and another method) diagnoses the inputs once; each merged folder
    holds diagnostics.json and a card section; the store holds one row; diagnostics=false
    writes none; an older merge without diagnostics gets them when re-run with them on."""
    import hhh_bench.merging.diagnostics as diag_mod
    from hhh_bench.stages.merge import run_merge

    base, sets = models
    calls = {"n": 0}
    original = diag_mod.diagnose

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    monkeypatch.setattr(diag_mod, "diagnose", counting)
    outs = []
    for scaling in (0.5, 1.0):
        cfg = make_cfg(tmp_path)
        cfg.merge.params.scaling = scaling
        outs.append(run_merge(cfg, base=base, models=sets["dense"]))
    outs.append(run_merge(make_cfg(tmp_path, "task_arithmetic"), base=base, models=sets["dense"]))
    assert calls["n"] == 1
    assert len({o["diagnostics_key"] for o in outs}) == 1
    for o in outs:
        out = Path(o["out_dir"])
        report = json.loads((out / "diagnostics.json").read_text())
        assert report["num_models"] == 3 and report["params"]
        card = (out / "README.md").read_text()
        assert card.count("## Task-vector diagnostics") == 1 and "| self_attn.q_proj |" in card
        assert "## Parameters" in card  # the engine's card is kept
    rows = read_diagnostics(tmp_path / "diagnostics.jsonl")
    assert len(rows) == 1 and rows[0]["label"] == "dpo, seed 0"
    # a row edited afterwards (its digest kept) is named, not drawn (the second review of #26)
    store = tmp_path / "diagnostics.jsonl"
    text = store.read_text()
    edited = json.loads(text.splitlines()[0])
    edited["num_models"] = 4
    store.write_text(json.dumps(edited) + "\n")
    with pytest.raises(ValueError, match=r"diagnostics.jsonl, line 1: diagnostics row .* was "
                       r"changed after hhh-bench wrote it"):  # fmt: skip
        read_diagnostics(store)
    store.write_text(text)
    # RESM's rank knobs change what is diagnosed (its ranks): a second computation
    cfg = make_cfg(tmp_path, "resm")
    cfg.merge.params.rank_spread = 0.5
    resm = run_merge(cfg, base=base, models=sets["dense"])
    assert calls["n"] == 2 and resm["diagnostics_key"] != outs[0]["diagnostics_key"]
    # switched off: no diagnostics
    off = run_merge(make_cfg(tmp_path / "off", diagnostics=False), base=base, models=sets["dense"])
    assert "diagnostics" not in off and not (Path(off["out_dir"]) / "diagnostics.json").exists()
    assert not (tmp_path / "off" / "diagnostics.jsonl").exists()
    # the same (cached) merge with diagnostics on: attached afterwards, card section once
    again = run_merge(make_cfg(tmp_path / "off"), base=base, models=sets["dense"])
    assert again["cached"] and Path(again["diagnostics"]).is_file()
    again = run_merge(make_cfg(tmp_path / "off"), base=base, models=sets["dense"])
    card = (Path(again["out_dir"]) / "README.md").read_text()
    assert card.count("## Task-vector diagnostics") == 1


def test_diagnose_stage_is_cached_and_fails_like_the_engine(models, tmp_path):
    """stage=diagnose with explicit merge inputs: <root>/diagnose/<key>/ holds the report, its
    summary and provenance; a second run is served from the cache; a bad input fails with the
    engine's message before anything is written."""
    from hhh_bench.pipeline import _diagnose as _run_diagnose_stage
    from hhh_bench.stages.common import CACHE

    base, sets = models
    cfg = make_cfg(tmp_path, "resm")
    cfg.merge.base = base
    cfg.merge.models = sets["heavy"]
    first = _run_diagnose_stage(cfg, {})
    folder = Path(first["dir"])
    assert folder.parent == tmp_path / "diagnose" and not first["cached"]
    for f in ("diagnostics.json", "diagnostics.md", "provenance.json"):
        assert (folder / f).is_file(), f
    CACHE.reset()  # a new run: the folder written by the first one is reused
    second = _run_diagnose_stage(cfg, {})
    assert second["cached"] and second["key"] == first["key"]
    assert CACHE.hits == {"diagnose": 1} and CACHE.misses == {}
    assert read_diagnostics(tmp_path / "diagnostics.jsonl")[0]["label"] == "explicit models, seed 0"
    cfg.merge.models = [sets["heavy"][0], base + "-missing"]
    with pytest.raises(ValueError, match="base-missing' does not exist"):
        _run_diagnose_stage(cfg, {})


def test_report_draws_heatmaps_and_tables_side_by_side(models, tmp_path):
    """Two diagnosed sets (dense and heavy-tailed deltas) -> report.md has the model-wide table
    with both, a layer-type table each, and one PNG per statistic whose grid is (layer × type);
    the heavy set's layer 1 shows the larger tail share."""
    from hhh_bench.stages.diagnose import run_diagnose
    from hhh_bench.stages.report import run_report
    from hhh_bench.tracking.diagnostics_view import layer_axes
    from hhh_bench.tracking.plots import diagnostics_grid

    base, sets = models
    for kind in ("dense", "heavy"):
        cfg = make_cfg(tmp_path, diagnostics_label=f"{kind} deltas")
        run_diagnose(cfg, base, sets[kind])
    shutil.copy(FIXTURE, tmp_path / "results.jsonl")
    cfg.eval = {"report_split": "test", "select_split": "validation", "select_by": "average"}
    cfg.logger = {"name": "none"}
    out = run_report(cfg)
    md = Path(out["report_md"]).read_text()
    assert "## Task-vector diagnostics" in md
    assert "| dense deltas | 3 |" in md and "| heavy deltas | 3 |" in md
    assert "### dense deltas" in md and "### heavy deltas" in md
    assert set(out["diagnostics_figures"]) >= {"kurtosis", "tail_share_3", "sign_conflict",
                                               "subspace_overlap", "resm_density"}  # fmt: skip
    for stat, path in out["diagnostics_figures"].items():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stat
        assert f"(diag_{stat}.png)" in md
    rows = read_diagnostics(tmp_path / "diagnostics.jsonl")
    layers, types = layer_axes(rows)
    assert layers == [0, 1] and "self_attn.q_proj" in types and "embed_tokens" not in types
    grids = {r["label"]: diagnostics_grid(r, "tail_share_3", layers, types) for r in rows}
    j = types.index("mlp.up_proj")
    assert grids["heavy deltas"][1][j] > 0.5 > grids["dense deltas"][1][j]
    assert grids["heavy deltas"][1][j] > grids["heavy deltas"][0][j]
    q = next(p for p in rows[0]["params"] if p["name"] == "model.layers.1.mlp.up_proj.weight")
    assert grids[rows[0]["label"]][1][j] == pytest.approx(q["tail_share_3"])


def test_a_drawing_merge_takes_the_runs_seed_unless_its_own_is_given(models, tmp_path):
    """Battery 12 (F5): every seed of seeds=[...] merged DARE with mask seed 0. A method that
    draws (DARE, DELLA) is seeded with the run's seed; merge.params.seed, given, wins; a
    deterministic method keeps seed 0 (unread; its cache keys unchanged)."""
    from hhh_bench.stages.merge import run_merge

    base, sets = models

    def payload(cfg):
        cfg.merge_engine.diagnostics = False
        out = run_merge(cfg, base=base, models=sets["dense"])
        return json.loads((Path(out["out_dir"]).parent / "key.json").read_text())["payload"]

    cfg = make_cfg(tmp_path / "a", "dare_ta")
    cfg.seed = 3
    p3 = payload(cfg)
    assert p3["params"]["seed"] == 3
    cfg.merge.params.seed = 5
    assert payload(cfg)["params"]["seed"] == 5
    cfg = make_cfg(tmp_path / "b", "task_arithmetic")
    cfg.seed = 3
    assert payload(cfg)["params"]["seed"] == 0  # never read: as it always was (its cache key)


def test_a_diagnosis_repeated_within_a_run_is_reused_until_a_file_changes(models, tmp_path):
    """Every merge of a seed diagnoses the same specialists: the second lookup of one run is
    served from the run's memo (no second verification, no second row), and a file edited
    since is verified again (refused), never served."""
    from hhh_bench.core.content import ContentMismatch
    from hhh_bench.stages.common import CACHE
    from hhh_bench.stages.diagnose import run_diagnose

    base, sets = models
    cfg = make_cfg(tmp_path, "resm")
    CACHE.reset()
    first = run_diagnose(cfg, base, sets["heavy"])
    again = run_diagnose(cfg, base, sets["heavy"])
    assert again["cached"] and again["key"] == first["key"] and not again["row_appended"]
    report = Path(first["dir"]) / "diagnostics.md"
    report.write_text(report.read_text() + "edited\n")
    with pytest.raises(ContentMismatch, match="diagnostics.md"):
        run_diagnose(cfg, base, sets["heavy"])
    CACHE.reset()
