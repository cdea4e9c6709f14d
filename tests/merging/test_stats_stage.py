"""The stats stage: merge=fisher / merge=regmean in the pipeline get each specialist's statistics
from its own training rows, computed once and reused by every later merge (issue 31)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from hhh_bench.models import TinyModelSpec, build_tiny_model, build_word_tokenizer
from hhh_bench.stages.common import load_option

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
SPEC = TinyModelSpec(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
DIMS = ["helpful", "honest"]  # two specialists: each statistics file costs ~0.7 s here


def _row(dim: str, i: int, prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "dimension": dim, "source": "test", "id": f"{dim}/{i}"}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """θ0, two perturbed 'specialists' and a data folder with each one's training rows."""
    root = tmp_path_factory.mktemp("stats_stage")
    tok = build_word_tokenizer(WORDS)
    build_tiny_model(SPEC, tok, seed=0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    models = []
    for d in DIMS:
        m = build_tiny_model(SPEC, tok, seed=0)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        m.save_pretrained(root / d)
        tok.save_pretrained(root / d)
        models.append(str(root / d))
    (root / "data" / "prefs").mkdir(parents=True)
    for k, d in enumerate(DIMS):
        rows = [
            _row(d, i, f"a {WORDS[(i + k) % 8]} b", f"c {WORDS[i % 8]}", "d e") for i in range(5)
        ]
        (root / "data" / "prefs" / f"{d}_train.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    return root, str(root / "base"), models, {"dir": str(root / "data"), "key": "test-data"}


def _cfg(root, method: str, **params):
    cfg = OmegaConf.create({
        "root": str(root), "name": "stats-test", "seed": 0, "train": {"name": "dpo"},
        "data": {"dimensions": DIMS, "noise": {"flip_rate": 0.0, "dimension": None, "seed": 0}},
        "merge": load_option("merge", method),
        "merge_engine": load_option("merge_engine", "default"),
    })  # fmt: skip
    cfg.merge_engine.progress = False
    cfg.merge_engine.diagnostics = False
    cfg.merge_engine.cache_dir = None
    cfg.merge_engine.statistics.num_samples = 4  # of 5 rows: a seeded draw
    for k, v in params.items():
        cfg.merge.params[k] = v
    return cfg


@pytest.fixture
def counted(monkeypatch):
    """How many statistics files were computed."""
    import hhh_bench.merging.datastats as ds

    calls = []
    real = ds.specialist_statistics

    def counting(model, rows, out_file, options, **kw):
        calls.append((model, options.kinds))
        return real(model, rows, out_file, options, **kw)

    monkeypatch.setattr(ds, "specialist_statistics", counting)
    return calls


def test_fisher_and_regmean_compute_each_specialists_statistics_once(world, tmp_path, counted):
    """The first fisher merge computes a Fisher file per specialist; a second merge (another
    λ, another ε) computes none and reads the same files; regmean computes a Gram file per
    specialist once, for any α."""
    from hhh_bench.merging.engine import merge_models
    from hhh_bench.stages.merge import run_merge

    _, base, models, data = world
    first = run_merge(_cfg(tmp_path, "fisher"), base, models, DIMS, data=data)
    assert [k for _, k in counted] == [("fisher",)] * 2 and [m for m, _ in counted] == models
    stats = first["params"]["statistics"]
    assert len(stats) == 2 and all(f"{tmp_path}/stats/" in p for p in stats)
    second = run_merge(_cfg(tmp_path, "fisher", scaling=0.5, minimal_fisher_weight=1e-3), base,
                       models, DIMS, data=data)  # fmt: skip
    assert len(counted) == 2  # reused: nothing computed again
    assert second["params"]["statistics"] == stats and second["key"] != first["key"]
    run_merge(_cfg(tmp_path, "regmean"), base, models, DIMS, data=data)
    run_merge(_cfg(tmp_path, "regmean", reduce_non_diagonal_ratio=0.5), base, models, DIMS,
              data=data)  # fmt: skip
    assert [k for _, k in counted[2:]] == [("gram",)] * 2
    # the stats outputs' key fields are the ones docs/caching.md documents
    from test_verified_cache import _documented_fields

    req, opt = _documented_fields()["stats"]
    for key_file in (tmp_path / "stats").glob("*/key.json"):
        fields = set(json.loads(key_file.read_text())["payload"])
        assert req <= fields <= req | opt, (sorted(fields), sorted(req | opt))
    # the stage's merge is the engine's with those files
    merge_models("fisher", base, models, tmp_path / "direct", statistics=stats, progress=False)
    got, want = (
        load_file(f"{first['out_dir']}/model.safetensors"),
        load_file(str(tmp_path / "direct" / "model.safetensors")),
    )
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_statistics_are_the_specialists_own_rows(world, tmp_path):
    """Each file is computed on 4 rows drawn (seed 0) from that dimension's training rows; the
    stage's file equals the library's on the same draw."""
    from hhh_bench.merging.datastats import StatsOptions, select_rows, specialist_statistics
    from hhh_bench.stages.stats import specialist_rows, statistics_for

    _, base, models, data = world
    cfg = _cfg(tmp_path, "regmean")
    out = statistics_for(cfg, data, base, models, DIMS, "gram")
    for d, m, res in zip(DIMS, models, out, strict=True):
        rows = specialist_rows(cfg, data, d)
        assert [r["id"] for r in rows] == [f"{d}/{i}" for i in range(5)]
        picked = select_rows(rows, 4, 0)
        assert res["row_ids"] == [r["id"] for r in picked] and res["num_samples"] == 4
        specialist_statistics(
            m, picked, tmp_path / "lib.safetensors", StatsOptions(kinds=("gram",))
        )
        a, b = load_file(res["path"]), load_file(str(tmp_path / "lib.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_models_that_match_no_training_data_are_refused(world, tmp_path):
    from hhh_bench.stages.merge import run_merge

    _, base, models, data = world
    with pytest.raises(ValueError, match=r"fisher needs data: .* the 1 models cannot be matched"):
        run_merge(_cfg(tmp_path, "fisher"), base, models[:1], None, data=data)
