"""InSilicoPerturberStats: parity with the reference's CSVs, every mode, raw/tidy round trips, CLI."""

from __future__ import annotations

import pickle
import random
import re
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ranksums

from geneformer._utils import check_cell_states as validate_cell_states
from geneformer.compat import InSilicoPerturberStats
from geneformer.perturb import _results as R
from geneformer.perturb import bh_fdr
from geneformer.perturb._stats import _ImpactModel

KANG_STATES = {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []}
LIST_GENES = ["ENSG00000198851", "ENSG00000090382", "ENSG00000156738"]  # CD3E, LYZ, MS4A1


# ---------------------------------------------------------------------------------------------
# parity with the reference
# ---------------------------------------------------------------------------------------------
def _tokens_of(text) -> str:
    """'(np.int16(1), np.int16(2))' and '(1, 2)' → '1,2' (the reference printed numpy reprs)."""
    text = re.sub(r"np\.int\d+\((-?\d+)\)", r"\1", str(text))
    return ",".join(re.findall(r"-?\d+", text)) if text.startswith("(") else text


def assert_same_csv(ref_path, mine_path, key_columns=("Perturbed",)):
    ref = pd.read_csv(ref_path, index_col=0)
    mine = pd.read_csv(mine_path, index_col=0)
    assert list(mine.columns) == list(ref.columns)
    assert len(mine) == len(ref)
    assert mine.index.tolist() == ref.index.tolist()
    for col in ref.columns:
        a, b = ref[col].to_numpy(), mine[col].to_numpy()
        if col in key_columns:
            assert [_tokens_of(x) for x in a] == [_tokens_of(x) for x in b], col
        elif ref[col].dtype.kind == "f" and mine[col].dtype.kind == "f":
            rel = "pval" in col or "FDR" in col
            np.testing.assert_allclose(b, a, rtol=1e-6 if rel else 0, atol=0 if rel else 1e-6, err_msg=col)
        else:
            assert pd.Series(a).astype(str).tolist() == pd.Series(b).astype(str).tolist(), col


def test_goal_state_shift_parity(golden_dir, tmp_path):
    stats = InSilicoPerturberStats(mode="goal_state_shift", cell_states_to_model=KANG_STATES, model_version="V2")
    stats.get_stats(golden_dir / "perturb" / "V2_kang_goal_delete_all", None, tmp_path, "goal")
    assert_same_csv(golden_dir / "stats" / "V2_kang_goal_state_shift.csv", tmp_path / "goal.csv")


def test_mixture_model_parity(golden_dir, tmp_path):
    stats = InSilicoPerturberStats(mode="mixture_model", model_version="V1")
    stats.get_stats(golden_dir / "perturb" / "V1_delete_all", None, tmp_path, "mix")
    assert_same_csv(golden_dir / "stats" / "V1_delete_all_mixture_model.csv", tmp_path / "mix.csv")


def test_aggregate_gene_shifts_parity(golden_dir, tmp_path):
    stats = InSilicoPerturberStats(mode="aggregate_gene_shifts", genes_perturbed=LIST_GENES, model_version="V1")
    df = stats.get_stats(golden_dir / "perturb" / "V1_delete_list", None, tmp_path, "agg")
    assert_same_csv(golden_dir / "stats" / "V1_delete_list_aggregate_gene_shifts.csv", tmp_path / "agg.csv")
    assert df["Perturbed"].iloc[0] == (17276, 1876, 9969)  # plain ints, not np.int16 reprs


def test_aggregate_data_on_a_list(golden_dir, tmp_path):
    # the reference fails here: "Length of values (3) does not match length of index (20)"
    stats = InSilicoPerturberStats(mode="aggregate_data", genes_perturbed=LIST_GENES, model_version="V1")
    df = stats.get_stats(golden_dir / "perturb" / "V1_delete_list", None, tmp_path, "data")
    raw = R.merge_raw([o for _, o in R.read_raw_dir(golden_dir / "perturb" / "V1_delete_list", kinds={"cell"})])
    assert list(df.columns) == ["Cosine_sim", "Gene"]
    assert df["Cosine_sim"].tolist() == raw[((17276, 1876, 9969), "cell_emb")]
    assert (df["Gene"] == ("CD3E", "LYZ", "MS4A1")).all() and len(df) == 20
    # genes given in another order still find the group
    other = InSilicoPerturberStats(mode="aggregate_data", genes_perturbed=LIST_GENES[::-1], model_version="V1")
    assert len(other.get_stats(golden_dir / "perturb" / "V1_delete_list", None, tmp_path, "d2")) == 20


# ---------------------------------------------------------------------------------------------
# synthetic results
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def tokens(vocab_v1):
    genes = vocab_v1.genes[100:130]
    return [vocab_v1.token_dict[g] for g in genes], genes


def _write(folder, name, obj):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as fh:
        pickle.dump(obj, fh)


def _cell_dict(toks, rng, loc, n_max=6):
    d = defaultdict(list)
    for t in toks:
        d[(t, "cell_emb")] = list(rng.normal(loc, 0.01, size=int(rng.integers(1, n_max))))
    return d


def test_vs_null_matches_scipy(tokens, tmp_path):
    toks, genes = tokens
    rng = np.random.default_rng(1)
    test_dir, null_dir = tmp_path / "test", tmp_path / "null"
    _write(test_dir, "a_dict_cell_embs_0batch0_raw.pickle", _cell_dict(toks[:20], rng, 0.95))
    _write(test_dir, "a_dict_cell_embs_1batch0_raw.pickle", _cell_dict(toks[:10], rng, 0.96))
    _write(test_dir, "a_dict_gene_embs_0batch0_raw.pickle", {(toks[0], toks[1]): [0.5]})  # ignored
    _write(null_dir, "n_dict_cell_embs_0batch0_raw.pickle", _cell_dict(toks[:15], rng, 0.97))
    null_dict = R.merge_raw([R.load_raw(p) for p in R.list_raw_files(null_dir)])
    test_dict = R.merge_raw([o for _, o in R.read_raw_dir(test_dir, kinds={"cell"})])

    stats = InSilicoPerturberStats(mode="vs_null", model_version="V1")
    df = stats.get_stats(test_dir, null_dir, tmp_path / "out", "vs")
    df2 = stats.get_stats(test_dir, None, tmp_path / "out", "vs2", null_dict_list=[null_dict])
    pd.testing.assert_frame_equal(df, df2)
    assert list(df.columns) == ["Gene", "Gene_name", "Ensembl_ID", "Test_avg_shift", "Null_avg_shift",
                                "Test_vs_null_avg_shift", "Test_vs_null_pval", "Test_vs_null_FDR",
                                "N_Detections_test", "N_Detections_null", "Sig"]
    assert df["N_Detections_null"].dtype == np.uint32
    exp_p = []
    for tok in sorted(toks[:20]):
        t, n = test_dict[(tok, "cell_emb")], null_dict.get((tok, "cell_emb"), [])
        p = ranksums(t, n, nan_policy="omit").pvalue if n else np.nan
        exp_p.append(1.0 if np.isnan(p) else p)
    by_gene = df.sort_index()
    assert by_gene["Gene"].tolist() == sorted(toks[:20])
    np.testing.assert_allclose(by_gene["Test_vs_null_pval"], exp_p, rtol=1e-9)
    np.testing.assert_allclose(by_gene["Test_vs_null_FDR"], bh_fdr(exp_p), rtol=1e-9)
    exp_mean = [np.mean(test_dict[(t, "cell_emb")]) for t in sorted(toks[:20])]
    np.testing.assert_allclose(by_gene["Test_avg_shift"], exp_mean)
    assert by_gene["Ensembl_ID"].tolist() == [genes[toks.index(t)] for t in sorted(toks[:20])]
    # sorted by Sig desc, shift desc
    key = list(zip(-df["Sig"], -df["Test_vs_null_avg_shift"]))
    assert key == sorted(key)
    with pytest.raises(ValueError, match="null"):
        stats.get_stats(test_dir, None, tmp_path / "out", "x")


def _state_dict(toks, rng, states=("ctrl", "stim", "other")):
    out = {}
    for i, s in enumerate(states):
        out[s] = defaultdict(list, {(t, "cell_emb"): list(rng.normal(0.001 * i, 0.001, size=int(rng.integers(1, 4))))
                                    for t in toks})
    return out


def test_goal_state_shift_with_alt_states_and_gene_files(tokens, tmp_path, monkeypatch):
    toks, _ = tokens
    rng = np.random.default_rng(2)
    folder = tmp_path / "isp"
    _write(folder, "x_dict_cell_embs_0batch0_raw.pickle", _state_dict(toks, rng))
    _write(folder, "x_dict_cell_embs_1batch0_raw.pickle", _state_dict(toks[5:], rng))
    # a gene-level pickle in the same folder (crashed the reference's state-mode reader)
    _write(folder, "x_dict_gene_embs_0batch0_raw.pickle", {(toks[0], toks[1]): [0.9]})
    _write(folder, "x_dict_cell_embs_2batch1_raw.pickle", {})  # empty final dump
    states = {"state_key": "c", "start_state": "ctrl", "goal_state": "stim", "alt_states": ["other"]}
    stats = InSilicoPerturberStats(mode="goal_state_shift", cell_states_to_model=states, model_version="V1")
    df = stats.get_stats(folder, None, tmp_path / "out", "goal").sort_index()
    assert list(df.columns) == ["Gene", "Gene_name", "Ensembl_ID", "Shift_to_goal_end", "Shift_to_alt_end_other",
                                "Goal_end_vs_random_pval", "Alt_end_vs_random_pval_other", "Goal_end_FDR",
                                "Alt_end_FDR_other", "N_Detections", "Sig"]
    merged = R.merge_raw([o for _, o in R.read_raw_dir(folder, kinds={"state"})])
    genes = sorted(toks)
    for state, shift_col, p_col in [("stim", "Shift_to_goal_end", "Goal_end_vs_random_pval"),
                                    ("other", "Shift_to_alt_end_other", "Alt_end_vs_random_pval_other")]:
        pool = [v for g in genes for v in merged[state][(g, "cell_emb")]]
        exp = [ranksums(pool, merged[state][(g, "cell_emb")]).pvalue for g in genes]
        np.testing.assert_allclose(df[p_col], exp, rtol=1e-9)
        np.testing.assert_allclose(df[shift_col], [np.mean(merged[state][(g, "cell_emb")]) for g in genes])
    assert df["N_Detections"].tolist() == [len(merged["stim"][(g, "cell_emb")]) for g in genes]

    # the null pool is subsampled with random.seed(42) beyond the cap
    import geneformer.perturb._stats_modes as S

    monkeypatch.setattr(S, "NULL_POOL_MAX", 20)
    df = stats.get_stats(folder, None, tmp_path / "out", "goal_small").sort_index()
    pool = [v for g in genes for v in merged["stim"][(g, "cell_emb")]]
    random.seed(42)
    pool = random.sample(pool, k=20)
    exp = [ranksums(pool, merged["stim"][(g, "cell_emb")]).pvalue for g in genes]
    np.testing.assert_allclose(df["Goal_end_vs_random_pval"], exp, rtol=1e-9)


def test_goal_state_shift_group(tokens, tmp_path, vocab_v1):
    toks, genes = tokens
    key = (toks[0], toks[1])
    folder = tmp_path / "grp"
    obj = {"ctrl": {(key, "cell_emb"): [0.1, 0.2]}, "stim": {(key, "cell_emb"): [0.3, 0.5]}}
    _write(folder, "g_cell_embs_dict_[1, 2]_raw.pickle", obj)
    stats = InSilicoPerturberStats(mode="goal_state_shift", genes_perturbed=genes[:2],
                                   cell_states_to_model=KANG_STATES | {"start_state": "ctrl"}, model_version="V1")
    df = stats.get_stats(folder, None, tmp_path / "out", "grp")
    assert list(df.columns) == ["Shift_to_goal_end"] and df.iloc[0, 0] == pytest.approx(0.4)


def test_mixture_model_component_order_is_fixed():
    class FakeGM:  # components in "wrong" order: component 0 has the higher mean
        means_ = np.array([[0.98], [0.90]])

        def predict(self, x):
            return (np.abs(x[:, 0] - 0.90) < np.abs(x[:, 0] - 0.98)).astype(int)

    impact = _ImpactModel(FakeGM())
    assert impact(np.array([0.85, 0.91, 0.97, 0.99])).tolist() == [1, 1, 0, 0]


def test_mixture_model_anchor_gene_mode(tokens, tmp_path):
    toks, genes = tokens
    anchor = toks[0]
    rng = np.random.default_rng(3)
    gene_dict = defaultdict(list)
    for t in toks[1:]:
        loc = 0.8 if t in toks[1:6] else 0.99
        gene_dict[(anchor, t)] = list(rng.normal(loc, 0.005, size=3))
    gene_dict[(anchor, "cell_emb")] = [0.9, 0.91]
    _write(tmp_path / "isp", "a_gene_embs_dict_[x]_raw.pickle", gene_dict)
    stats = InSilicoPerturberStats(mode="mixture_model", anchor_gene=genes[0], model_version="V1")
    df = stats.get_stats(tmp_path / "isp", None, tmp_path / "out", "anchor")
    assert sorted(df["Gene"]) == sorted(toks[1:])
    assert set(df.loc[df["Impact_component"] == 1, "Gene"]) == set(toks[1:6])
    assert (df["N_Detections"] == 3).all()
    assert df["Impact_component"].tolist() == sorted(df["Impact_component"], reverse=True)


def test_mixture_model_combos(tokens, tmp_path):
    toks, genes = tokens
    anchor = toks[0]
    rng = np.random.default_rng(4)
    pairs = defaultdict(list, {(t, "cell_emb"): list(rng.normal(0.9 if t in toks[1:5] else 0.98, 0.003, 2))
                               for t in toks[1:]})
    single = defaultdict(list, {(t, "cell_emb"): [0.99, 0.995] for t in toks})
    _write(tmp_path / "pairs", "p_dict_cell_embs_0batch0_raw.pickle", pairs)
    _write(tmp_path / "single", "s_dict_cell_embs_0batch0_raw.pickle", single)
    stats = InSilicoPerturberStats(mode="mixture_model", combos=1, anchor_gene=genes[0], model_version="V1")
    df = stats.get_stats(tmp_path / "pairs", tmp_path / "single", tmp_path / "out", "combo")
    assert list(df.columns) == ["Gene", "Gene_name", "Ensembl_ID", "Anchor_shift", "Test_token_shift",
                                "Sum_of_indiv_shifts", "Combo_shift", "Combo_minus_sum_shift", "Impact_component",
                                "Impact_component_percent", "N_Detections"]
    row = df.set_index("Gene").loc[toks[1]]
    assert row["Anchor_shift"] == pytest.approx(0.9925) and row["Test_token_shift"] == pytest.approx(0.9925)
    assert row["Sum_of_indiv_shifts"] == pytest.approx(0.985)
    assert row["Combo_minus_sum_shift"] == pytest.approx(np.mean(pairs[(toks[1], "cell_emb")]) - 0.985)
    assert set(df.loc[df["Impact_component"] == 1, "Gene"]) == set(toks[1:5])
    assert df["Combo_minus_sum_shift"].is_monotonic_increasing
    with pytest.raises(ValueError, match="single-gene"):
        stats.get_stats(tmp_path / "pairs", None, tmp_path / "out", "combo2")
    # legacy (anchor, token, combo) triples
    triples = {(t, "cell_emb"): [(0.99, 0.98, 0.9 if t in toks[1:5] else 0.97)] for t in toks[1:]}
    _write(tmp_path / "legacy", "l_raw.pickle", triples)
    df = stats.get_stats(tmp_path / "legacy", None, tmp_path / "out", "legacy")
    row = df.set_index("Gene").loc[toks[1]]
    assert row["Sum_of_indiv_shifts"] == pytest.approx(0.97) and row["Combo_shift"] == pytest.approx(0.9)


def test_aggregate_gene_shifts_all_mode(tokens, tmp_path):
    toks, _ = tokens
    rng = np.random.default_rng(5)
    cells = [toks[:8], toks[4:12]]
    expected = defaultdict(list)
    for c, cell in enumerate(cells):
        cell_d, gene_d = defaultdict(list), defaultdict(list)
        for g in cell:
            cell_d[(g, "cell_emb")].append(float(rng.random()))
            for a in cell:
                if a != g:
                    gene_d[(g, a)].append(float(rng.random()))
        _write(tmp_path / "isp", f"x_dict_cell_embs_{c}batch0_raw.pickle", cell_d)
        _write(tmp_path / "isp", f"x_dict_gene_embs_{c}batch0_raw.pickle", gene_d)
        for d in (cell_d, gene_d):
            for k, v in d.items():
                expected[k] += v
    stats = InSilicoPerturberStats(mode="aggregate_gene_shifts", model_version="V1")
    df = stats.get_stats(tmp_path / "isp", None, tmp_path / "out", "agg")
    assert len(df) == len(expected)
    n_cell = sum(1 for k in expected if k[1] == "cell_emb")
    assert (df["Affected"].iloc[:n_cell] == "cell_emb").all()
    assert df["Cosine_sim_mean"].iloc[:n_cell].is_monotonic_increasing
    assert df["Cosine_sim_mean"].iloc[n_cell:].is_monotonic_increasing
    for _, row in df.iterrows():
        vals = expected[(row["Perturbed"], row["Affected"])]
        assert row["Cosine_sim_mean"] == pytest.approx(np.mean(vals))
        assert row["Cosine_sim_stdev"] == pytest.approx(np.std(vals), abs=1e-12)
        assert row["N_Detections"] == len(vals)


def test_validation_errors(vocab_v1, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        InSilicoPerturberStats(mode="nope", model_version="V1")
    with pytest.raises(ValueError, match="mixture_model"):
        InSilicoPerturberStats(mode="mixture_model", genes_perturbed=LIST_GENES, model_version="V1")
    with pytest.raises(ValueError, match="aggregate_data"):
        InSilicoPerturberStats(mode="aggregate_data", model_version="V1")
    with pytest.raises(ValueError, match="cell_states_to_model"):
        InSilicoPerturberStats(mode="goal_state_shift", model_version="V1")
    with pytest.raises(ValueError, match="anchor"):
        InSilicoPerturberStats(mode="vs_null", combos=1, model_version="V1")
    with pytest.raises(KeyError, match="ENSG_NOT_A_GENE"):
        InSilicoPerturberStats(mode="aggregate_data", genes_perturbed=["ENSG_NOT_A_GENE"], model_version="V1")
    with pytest.raises(FileNotFoundError):
        InSilicoPerturberStats(mode="mixture_model", model_version="V1").get_stats(tmp_path / "none", None,
                                                                                  tmp_path, "x")


def test_legacy_cell_states_are_converted():
    cs = validate_cell_states({"condition": (["ctrl"], ["stim"], ["other"])})
    assert cs == {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": ["other"]}
    assert validate_cell_states({"state_key": "c", "start_state": "a", "goal_state": "b"})["alt_states"] == []
    with pytest.raises(ValueError, match="differ"):
        validate_cell_states({"state_key": "c", "start_state": "a", "goal_state": "a"})


# ---------------------------------------------------------------------------------------------
# raw ↔ tidy
# ---------------------------------------------------------------------------------------------
def test_results_round_trip(golden_dir, tmp_path):
    for name in ("V1_delete_list", "V2_kang_goal_delete_all"):
        files = R.read_raw_dir(golden_dir / "perturb" / name)
        merged = R.merge_raw([o for _, o in files])
        tidy = R.raw_to_tidy([o for _, o in files])
        assert list(tidy.columns) == R.TIDY_COLUMNS
        assert len(tidy) == sum(len(v) for d in (merged.values() if name.startswith("V2") else [merged])
                                for v in d.values())
        back = R.tidy_to_raw(tidy)
        assert _plain(back) == _plain(merged)
        path = R.write_tidy(tidy, tmp_path / f"{name}.parquet")
        again = R.read_tidy(path)
        pd.testing.assert_frame_equal(again, tidy)
        # pickle written back reads identically
        R.save_raw(R.tidy_to_raw(again), tmp_path / f"{name}_raw.pickle")
        assert _plain(R.load_raw(tmp_path / f"{name}_raw.pickle")) == _plain(merged)
    tidy = R.raw_to_tidy(R.load_raw(R.list_raw_files(golden_dir / "perturb" / "V1_delete_list")[1]))
    assert tidy["affected"].notna().all() and tidy["state"].isna().all()
    assert tidy["perturbed"].iloc[0] == (17276, 1876, 9969)


def _plain(obj):
    if obj and isinstance(next(iter(obj.values())), dict):
        return {s: _plain(d) for s, d in obj.items()}
    return {(R.normalize_key(k[0]), k[1]): list(v) for k, v in obj.items()}


def test_tidy_order_and_cells():
    raw_a = {(5, "cell_emb"): [0.1, 0.2], (5, 7): [0.3], ((5, 6), "cell_emb"): [0.4]}
    raw_b = {(5, "cell_emb"): [0.5], (5, 7): [0.6]}
    tidy = R.raw_to_tidy([raw_a, raw_b])
    assert tidy["cell"].tolist() == [0, 1, 0, 0, 2, 1]
    assert tidy["perturbed"].tolist() == [5, 5, 5, (5, 6), 5, 5]
    assert tidy["affected"].isna().tolist() == [True, True, False, True, True, False]
    assert dict(R.tidy_to_raw(tidy)) == {(5, "cell_emb"): [0.1, 0.2, 0.5], (5, 7): [0.3, 0.6],
                                         ((5, 6), "cell_emb"): [0.4]}
    assert R.raw_kind(raw_a, full=True) == "mixed" and R.raw_kind({}) == "empty"
    assert R.raw_kind(raw_b) == "mixed" and R.raw_kind({(5, 7): [1.0]}) == "gene"


def test_load_raw_refuses_objects(tmp_path):
    import datetime

    p = tmp_path / "evil_raw.pickle"
    p.write_bytes(pickle.dumps({(1, "cell_emb"): [datetime.date(2020, 1, 1)]}))
    with pytest.raises(ValueError, match="refusing"):
        R.load_raw(p)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_perturb_stats(golden_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from geneformer.cli import perturb_stats
    from geneformer.cli.main import guard_commands

    app = typer.Typer()
    perturb_stats.register(app)
    guard_commands(app)  # as the real app does: input errors end with exit 2

    @app.callback()
    def _root():  # a group, so the command keeps its name as with the real app
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["perturb-stats", str(golden_dir / "perturb" / "V2_kang_goal_delete_all"),
                              "--output", str(tmp_path), "--prefix", "goal", "--mode", "goal_state_shift",
                              "--model-version", "V2", "--state-key", "condition", "--start-state", "ctrl",
                              "--goal-state", "stim"])
    assert res.exit_code == 0, res.output
    assert_same_csv(golden_dir / "stats" / "V2_kang_goal_state_shift.csv", tmp_path / "goal.csv")
    res = runner.invoke(app, ["perturb-stats", str(golden_dir / "perturb" / "V1_delete_list"), "--output",
                              str(tmp_path), "--prefix", "agg", "--mode", "aggregate_data", "--model-version", "V1"]
                        + [a for g in LIST_GENES for a in ("--genes", g)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "agg.csv")) == 20
    res = runner.invoke(app, ["perturb-stats", str(tmp_path / "missing"), "--output", str(tmp_path),
                              "--prefix", "x", "--mode", "mixture_model"])
    assert res.exit_code == 2 and "error" in res.output


def test_states_without_state_results_is_a_clear_error(golden_dir, tmp_path):
    stats = InSilicoPerturberStats(mode="goal_state_shift", cell_states_to_model=KANG_STATES, model_version="V1")
    with pytest.raises(FileNotFoundError, match="state-nested"):
        stats.get_stats(golden_dir / "perturb" / "V1_delete_all", None, tmp_path, "x")


def test_vs_null_anchor_gene_mode(tokens, tmp_path):
    toks, genes = tokens
    anchor = toks[0]
    test = {(anchor, t): [0.8, 0.82] for t in toks[1:6]}
    null = {(anchor, t): [0.95, 0.97, 0.96] for t in toks[3:10]}  # toks[6:10] are not in the test
    _write(tmp_path / "t", "t_gene_embs_dict_[1]_raw.pickle", test)
    _write(tmp_path / "n", "n_gene_embs_dict_[1]_raw.pickle", null)
    stats = InSilicoPerturberStats(mode="vs_null", anchor_gene=genes[0], model_version="V1")
    df = stats.get_stats(tmp_path / "t", tmp_path / "n", tmp_path / "out", "vs").set_index("Gene")
    assert sorted(df.index) == sorted(toks[1:6])
    assert df.loc[toks[1], "N_Detections_null"] == 0 and df.loc[toks[1], "Test_vs_null_pval"] == 1.0
    assert df.loc[toks[4], "N_Detections_null"] == 3
    assert df.loc[toks[4], "Test_vs_null_pval"] == pytest.approx(ranksums([0.8, 0.82], [0.95, 0.97, 0.96]).pvalue)


def test_core_stats_functions(golden_dir, tmp_path, vocab_v1):
    from geneformer.perturb import aggregate_gene_shifts, compute_stats, gene_names, read_shifts, stats_spec

    folder = golden_dir / "perturb" / "V1_delete_list"
    ref = InSilicoPerturberStats(mode="aggregate_gene_shifts", genes_perturbed=LIST_GENES,
                                 model_version="V1").get_stats(folder, None, tmp_path, "agg")
    spec = stats_spec("aggregate_gene_shifts", LIST_GENES, vocab="V1")
    assert spec.tokens == (17276, 1876, 9969)
    pd.testing.assert_frame_equal(compute_stats(spec, folder, progress=False), ref)
    # the mode function over the values of the folder, names from a loaded vocabulary
    shifts = read_shifts(folder, {"cell", "gene", "mixed"}, progress=False)
    pd.testing.assert_frame_equal(aggregate_gene_shifts(shifts, gene_names(vocab_v1), group=True), ref)
    with pytest.raises(ValueError, match="mode must be one of"):
        stats_spec("nope", vocab="V1")


# ---- the results' vocabulary ----------------------------------------------------------------------
def test_stats_refuse_results_of_another_vocabulary(golden_dir, tmp_path):
    """V1 results named with V2 would give wrong names (and NaN beyond V2's size): refused."""
    from geneformer._utils import VocabularyError
    from geneformer.perturb import perturbation_stats, stats_spec

    with pytest.raises(VocabularyError, match=r"beyond the V2 vocabulary.*--model-version V1"):
        perturbation_stats(golden_dir / "perturb" / "V1_delete_all", tmp_path, "x", stats_spec(vocab="V2"))
    assert not (tmp_path / "x.csv").exists()

    # a run's own record of its vocabulary is believed even when every id would fit
    import shutil

    src = golden_dir / "perturb" / "V2_kang_goal_delete_all"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    (run / "in_silico_delete_goal_vocab.json").write_text('{"model_version": "V1", "vocab_size": 25426}')
    spec = stats_spec("goal_state_shift", vocab="V2", cell_states_to_model={
        "state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []})
    with pytest.raises(VocabularyError, match=r"made with the V1 vocabulary.*in_silico_delete_goal_vocab.json"):
        perturbation_stats(run, tmp_path, "y", spec)
    (run / "in_silico_delete_goal_vocab.json").write_text('{"model_version": "V2", "vocab_size": 20275}')
    assert len(perturbation_stats(run, tmp_path, "y", spec)) > 0
