"""The length-controlled win rate: ours against AlpacaEval's own GLM code, on the same items.

    python -m venv .venv-alpaca && .venv-alpaca/bin/pip install alpaca_eval==0.6.6
    PYTHONPATH=src .venv/bin/python benchmarks/peercheck_alpaca_lc.py --peer-python .venv-alpaca/bin/python
    PYTHONPATH=src .venv/bin/python benchmarks/peercheck_alpaca_lc.py --peer-python ... --write

Builds seeded cases (answer and reference lengths in characters, soft preferences drawn from a
logistic model with a length effect, with and without a per-instruction difficulty), then

- in a subprocess of the peer python, runs AlpacaEval's own functions from
  ``alpaca_eval.metrics.glm_winrate``: the features exactly as ``_get_featurized_data`` makes them
  (``std_delta_len = (len(output_1) − len(output_2)) / sd``, output_1 the reference, output_2
  the model; preference in [0, 1]), the design matrix of the formula by ``make_dmatrix_for_model``
  (patsy), the fit by ``fit_LogisticRegressionCV(..., is_ytrue_proba=True, n_splits=0, C=C)``
  (L1, liblinear, soft labels by duplication), and the LC rate as the mean predicted preference
  at ``std_delta_len = 0``. The "gamed baselines" regularisation and the leaderboard's
  instruction difficulties need AlpacaEval's hub files and its judge: the formulas used are
  ``length_controlled_minimal``'s and ``length_controlled_noreg``'s, with the difficulties given
  per item;
- in this process, ours (``hhh_bench.evaluation.length_control.length_controlled``).

Prints, per case and C, both LC rates and their difference. ``--write`` saves the cases and the
peer's numbers to ``tests/assets/eval/alpaca_lc_reference.json``, which
``tests/eval/test_length_control.py`` checks ours against (so the test needs no peer install).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

FIXTURE = (
    Path(__file__).resolve().parents[1] / "tests" / "assets" / "eval" / "alpaca_lc_reference.json"
)
CS = (1e6, 100.0)  # ~unpenalised; AlpacaEval's C when it does not cross-validate

PEER = r"""
import json, sys
import numpy as np, pandas as pd
from alpaca_eval.metrics.glm_winrate import fit_LogisticRegressionCV, make_dmatrix_for_model, _logistic
cases = json.load(sys.stdin)
out = []
for case in cases:
    df = pd.DataFrame({"preference": case["preference"], "index": range(len(case["preference"]))})
    len_1 = pd.Series(case["reference_length"], dtype=float)  # output_1: the baseline's answer
    len_2 = pd.Series(case["length"], dtype=float)            # output_2: the model's answer
    delta = len_1 - len_2
    df["std_delta_len"] = delta / delta.std()
    df["not_gamed_baseline"] = True
    if case["difficulty"] is not None:
        df["instruction_difficulty"] = case["difficulty"]
        formula = "np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline.astype(float) - 1"
        test = df[["instruction_difficulty", "not_gamed_baseline"]].copy()
    else:
        formula = "np.tanh(std_delta_len) + not_gamed_baseline.astype(float) - 1"
        test = df[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0
    res = {}
    for C in case["Cs"]:
        train, x_test = make_dmatrix_for_model(df, test, formula=formula)
        model = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, n_splits=0, C=C)
        res[repr(C)] = {"lc_win_rate": float(model.predict_proba(x_test)[:, 1].mean()),
                        "coef": dict(zip(x_test.columns, map(float, model.coef_[0])))}
    out.append(res)
json.dump(out, sys.stdout)
"""


def cases(seed: int = 0) -> list[dict]:
    """Seeded cases: (n, with difficulty, length effect)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, n, with_difficulty, phi in (
        ("three_items", 3, False, -0.8),
        ("length_biased_40", 40, False, -1.5),
        ("no_length_effect_60", 60, False, 0.0),
        ("difficulty_50", 50, True, -1.0),
    ):
        ref = rng.integers(200, 900, n).astype(float)
        length = np.clip(ref + rng.normal(0, 300, n), 1, None).round()
        delta = ref - length
        gamma = rng.normal(0, 1, n) if with_difficulty else np.zeros(n)
        logit = 0.3 + phi * np.tanh(delta / delta.std(ddof=1)) + 0.7 * gamma + rng.normal(0, 0.5, n)
        pref = 1 / (1 + np.exp(-logit))
        out.append({
            "name": name,
            "preference": [round(float(p), 6) for p in pref],
            "length": [float(x) for x in length],
            "reference_length": [float(x) for x in ref],
            "difficulty": [round(float(g), 6) for g in gamma] if with_difficulty else None,
            "Cs": list(CS),
        })  # fmt: skip
    return out


def main() -> None:
    from hhh_bench.evaluation.length_control import length_controlled

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer-python", default=".venv-alpaca/bin/python")
    ap.add_argument("--write", action="store_true", help=f"save the cases and numbers to {FIXTURE}")
    args = ap.parse_args()
    cs = cases()
    proc = subprocess.run([args.peer_python, "-c", PEER], input=json.dumps(cs), text=True,
                          capture_output=True, check=False)  # fmt: skip
    if proc.returncode:
        sys.exit(f"the peer failed:\n{proc.stderr[-3000:]}")
    peer = json.loads(proc.stdout)
    print("| case | C | AlpacaEval LC | ours | difference |\n|---|---:|---:|---:|---:|")
    for case, res in zip(cs, peer, strict=True):
        ours = length_controlled(case["preference"], case["length"], case["reference_length"],
                                 case["difficulty"]).lc_win_rate  # fmt: skip
        for c, r in res.items():
            print(f"| {case['name']} | {c} | {r['lc_win_rate']:.6f} | {ours:.6f} | "
                  f"{ours - r['lc_win_rate']:+.2e} |")  # fmt: skip
        case["alpaca_eval"] = res
    if args.write:
        FIXTURE.write_text(json.dumps({"source": "benchmarks/peercheck_alpaca_lc.py, alpaca_eval "
                                       "0.6.6 (tatsu-lab/alpaca_eval cd543a1)", "cases": cs},
                                      indent=1) + "\n")  # fmt: skip
        print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
