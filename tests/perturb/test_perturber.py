"""InSilicoPerturber: golden parity, every perturbation type and mode against a plain-forward oracle,
resume after an interruption, sharding, bad input, stats integration, API and CLI."""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

from geneformer.compat import InSilicoPerturber, InSilicoPerturberStats
from geneformer.inference import forward_first_position
from geneformer.perturb import _results as R
from geneformer.perturb import _run as P
from geneformer.perturb import _transforms as T
from geneformer.perturb._engine import RunSettings, n_perturbations

LIST_GENES = ["ENSG00000198851", "ENSG00000090382", "ENSG00000156738"]  # CD3E, LYZ, MS4A1
KANG_STATES = {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []}
CLS, EOS = 2, 3
# the full golden runs (~1 min) always run in CI, which requires ../shared
SLOW = os.environ.get("GENEFORMER_SLOW_TESTS") == "1" or os.environ.get("GENEFORMER_REQUIRE_SHARED") == "1"


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gold(golden_dir):
    return golden_dir


def _small(path, lengths, special, label_col):
    """A few real cells cut to the given lengths (V2 cells keep <cls> first and <eos> last)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    labels_all = ds[label_col]
    by_label: dict = {}
    for i, n in enumerate(ds["length"]):
        if n > max(lengths) + 2 and len(by_label.setdefault(labels_all[i], [])) < len(lengths):
            by_label[labels_all[i]].append(i)
    # alternate labels so that a state filter has something to drop
    long = [i for group in zip(*by_label.values()) for i in group][: len(lengths)]
    ids, labels, cell_ids = [], [], []
    for i, L in zip(long, lengths):
        row = ds[i]
        seq = list(row["input_ids"])
        seq = seq[: L - 1] + [EOS] if special else seq[:L]
        ids.append(seq)
        labels.append(row[label_col])
        cell_ids.append(row["cell_id"])
    return datasets.Dataset.from_dict({"input_ids": ids, "length": [len(s) for s in ids], label_col: labels,
                                       "cell_id": cell_ids})


@pytest.fixture(scope="module")
def cells_v1(golden_dir):
    return _small(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset", [14, 9, 17, 11], False,
                  "cell_type")


@pytest.fixture(scope="module")
def cells_v2(golden_dir):
    ds = _small(golden_dir / "tokenized" / "kang2018_ifnb_harmony_2k_V2.dataset", [12, 9, 15, 8, 11], True,
                "condition")
    return ds


def _run(tmp_path, model, data, prefix="t", **kw):
    kw.setdefault("progress", False)
    isp = InSilicoPerturber(**kw)
    path = isp.perturb_data(model, data, tmp_path, prefix)
    return isp, path


def _raw(tmp_path, kind):
    files = [p for p in glob.glob(str(tmp_path / "*_raw.pickle")) if f"{kind}_embs" in os.path.basename(p)]
    assert len(files) == 1, files
    return R.load_raw(files[0])


# ---------------------------------------------------------------------------------------------
# an independent oracle: plain HF forward of each sequence, alignment by gene token
# ---------------------------------------------------------------------------------------------
_CACHE: dict = {}


def _hidden(model, ids, layer):
    """hidden_states[layer] of one sequence from a plain transformers forward (encoder only)."""
    key = (id(model), tuple(ids), layer)
    if key not in _CACHE:
        with torch.no_grad():
            out = model.base_model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
        _CACHE[key] = out.hidden_states[layer][0]
    return _CACHE[key]


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def oracle(model, orig, pert, perturbed, layer, mode="cell", special=False, states=None):
    """(cell value or {state: shift}, {affected token: cosine}) for one perturbed sequence."""
    eo, ep = _hidden(model, orig, layer), _hidden(model, pert, layer)
    skip = set(perturbed) | ({CLS, EOS} if special else set())
    pos_o = {t: i for i, t in enumerate(orig)}
    genes = [t for t in pert if t not in skip and t in pos_o]
    pos_p = {t: i for i, t in enumerate(pert)}
    gene_cos = {t: float(_cos(ep[pos_p[t]], eo[pos_o[t]])) for t in genes}
    if mode.startswith("cls"):
        vo, vp = eo[0], ep[0]
    else:
        sl = slice(1, -1) if special else slice(None)
        vo, vp = eo[sl].mean(0), ep[sl].mean(0)
    if states is not None:
        return {s: float(_cos(vp, e) - _cos(vo, e)) for s, e in states.items()}, gene_cos
    if mode.startswith("cls"):
        return float(_cos(vp, vo)), gene_cos
    return float(np.mean(list(gene_cos.values()))), gene_cos


def _cells_in_order(data):
    """Cells in processing order (length-descending, stable) as token lists."""
    lens = np.asarray(data["length"])
    order = np.argsort(-lens, kind="stable")
    return [list(data[int(i)]["input_ids"]) for i in order]


def _check(cell_raw, gene_raw, expected, tol=2e-5, states=None):
    """expected: list of (key, cell value or {state: v}, {affected: cos}) in processing order."""
    exp_cell, exp_gene = {}, {}
    for key, val, genes in expected:
        if states:
            for s in states:
                exp_cell.setdefault(s, {}).setdefault((key, "cell_emb"), []).append(val[s])
        else:
            exp_cell.setdefault((key, "cell_emb"), []).append(val)
        for a, c in genes.items():
            exp_gene.setdefault((key, a), []).append(c)
    if states:
        assert set(cell_raw) == set(states)
        for s in states:
            _same(cell_raw[s], exp_cell[s], tol)
    else:
        _same(cell_raw, exp_cell, tol)
    if gene_raw is not None:
        _same(gene_raw, exp_gene, tol)


def _same(mine, exp, tol):
    mine = {(R.normalize_key(k[0]), k[1]): v for k, v in mine.items()}
    assert set(mine) == set(exp), (sorted(set(mine) ^ set(exp), key=str)[:5])
    for k, v in exp.items():
        np.testing.assert_allclose(mine[k], v, atol=tol, rtol=0, err_msg=str(k))


# ---------------------------------------------------------------------------------------------
# golden parity
# ---------------------------------------------------------------------------------------------
def _golden_merged(folder):
    def order(f):
        m = re.search(r"_(\d+)batch(-?\d+)_raw", f)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    files = sorted(glob.glob(str(folder / "*_raw.pickle")), key=order)
    return files, order


def _assert_golden(mine, gold, tol=1e-5):
    gold = {(R.normalize_key(k[0]), k[1] if isinstance(k[1], str) else int(k[1])): v for k, v in gold.items()}
    assert set(mine) == set(gold)
    worst = max(float(np.max(np.abs(np.asarray(mine[k]) - np.asarray(v)))) for k, v in gold.items())
    assert worst <= tol, worst


def test_golden_v1_delete_list(gold, tmp_path):
    _run(tmp_path, gold / "models" / "mini-V1", gold / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset",
         "V1_delete_list", perturb_type="delete", genes_to_perturb=LIST_GENES, emb_mode="cell_and_gene",
         max_ncells=20, model_version="V1")
    names = sorted(os.listdir(tmp_path))
    assert "in_silico_delete_V1_delete_list_cell_embs_dict_[17276, 1876, 9969]_raw.pickle" in names
    assert "in_silico_delete_V1_delete_list_gene_embs_dict_[17276, 1876, 9969]_raw.pickle" in names
    for kind in ("cell", "gene"):
        gfile = glob.glob(str(gold / "perturb" / "V1_delete_list" / f"*_{kind}_embs_dict_*"))[0]
        mine = _raw(tmp_path, kind)
        assert all(type(k[0]) is tuple and all(type(t) is int for t in k[0]) for k in mine)
        _assert_golden(mine, R.load_raw(gfile))  # lists compared in order: same cell order
    # stats on our output reproduce the reference's aggregate_gene_shifts CSV
    stats = InSilicoPerturberStats(mode="aggregate_gene_shifts", genes_perturbed=LIST_GENES, model_version="V1")
    df = stats.get_stats(tmp_path, None, tmp_path / "stats", "agg")
    ref = pd.read_csv(gold / "stats" / "V1_delete_list_aggregate_gene_shifts.csv", index_col=0)
    assert len(df) == len(ref)
    assert df["Affected_Ensembl_ID"].tolist()[:1] == ref["Affected_Ensembl_ID"].tolist()[:1]
    np.testing.assert_allclose(np.sort(df["Cosine_sim_mean"].to_numpy()), np.sort(ref["Cosine_sim_mean"].to_numpy()),
                               atol=1e-5)


@pytest.mark.parametrize("cells", [pytest.param("one", id="cell2"),
                                   pytest.param("all", id="all3", marks=pytest.mark.slow)])
def test_golden_v1_delete_all(gold, tmp_path, cells):
    if cells == "all" and not SLOW:
        pytest.skip("set GENEFORMER_SLOW_TESTS=1 for the full 3-cell run (~1 min)")
    inds = {"start": 2, "end": 3} if cells == "one" else "all"
    _run(tmp_path, gold / "models" / "mini-V1", gold / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset",
         "V1_delete_all", genes_to_perturb="all", emb_mode="cell_and_gene", max_ncells=3, forward_batch_size=64,
         model_version="V1", cell_inds_to_perturb=inds)
    files, order = _golden_merged(gold / "perturb" / "V1_delete_all")
    if cells == "one":
        files = [f for f in files if order(f)[0] == 2]
    gold_cell = R.merge_raw([R.load_raw(f) for f in files])
    _assert_golden(_raw(tmp_path, "cell"), gold_cell)
    gene = _raw(tmp_path, "gene")
    n = 575 if cells == "one" else None
    if n:
        assert len(gene) == n * (n - 1)  # every (deleted, affected) pair of the cell
    if cells == "all":
        stats = InSilicoPerturberStats(mode="mixture_model", model_version="V1")
        df = stats.get_stats(tmp_path, None, tmp_path / "stats", "mix")
        ref = pd.read_csv(gold / "stats" / "V1_delete_all_mixture_model.csv", index_col=0)
        # values agree to ~1e-6, so near-ties may swap places: compare gene by gene
        mine, theirs = df.set_index("Gene").sort_index(), ref.set_index("Gene").sort_index()
        assert mine.index.tolist() == theirs.index.tolist()
        np.testing.assert_allclose(mine["Test_avg_shift"], theirs["Test_avg_shift"], atol=1e-5)
        assert (mine["Impact_component"] != theirs["Impact_component"]).mean() < 0.01


@pytest.mark.parametrize("cells", [pytest.param("one", id="cell3"),
                                   pytest.param("all", id="all4", marks=pytest.mark.slow)])
def test_golden_v2_goal_state(gold, tmp_path, cells):
    if cells == "all" and not SLOW:
        pytest.skip("set GENEFORMER_SLOW_TESTS=1 for the full 4-cell run")
    inds = {"start": 3, "end": 4} if cells == "one" else "all"
    _run(tmp_path, gold / "models" / "mini-V2", gold / "tokenized" / "kang2018_ifnb_harmony_2k_V2.dataset",
         "kang", genes_to_perturb="all", emb_mode="cls", cell_states_to_model=KANG_STATES,
         state_embs_dict=gold / "embeddings" / "kang_V2_state_embs.pkl", max_ncells=4, model_version="V2",
         cell_inds_to_perturb=inds)
    files, order = _golden_merged(gold / "perturb" / "V2_kang_goal_delete_all")
    if cells == "one":
        files = [f for f in files if order(f)[0] == 3]
    gold_cell = R.merge_raw([R.load_raw(f) for f in files])
    mine = _raw(tmp_path, "cell")
    assert set(mine) == {"ctrl", "stim"}
    for state in ("ctrl", "stim"):
        _assert_golden(mine[state], gold_cell[state])
    # goal_state_shift statistics run on our output
    stats = InSilicoPerturberStats(mode="goal_state_shift", cell_states_to_model=KANG_STATES, model_version="V2")
    df = stats.get_stats(tmp_path, None, tmp_path / "stats", "goal")
    assert len(df) == len(mine["stim"]) and "Shift_to_goal_end" in df.columns
    if cells == "all":
        ref = pd.read_csv(gold / "stats" / "V2_kang_goal_state_shift.csv", index_col=0)
        np.testing.assert_allclose(df.sort_values("Gene")["Shift_to_goal_end"].to_numpy(),
                                   ref.sort_values("Gene")["Shift_to_goal_end"].to_numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# every type and mode against the oracle
# ---------------------------------------------------------------------------------------------
def _all_mode_expected(model, cells, ptype, layer, mode, special, rank_shift=None, states=None, combos=0,
                       anchor=None):
    expected = []
    for ids in cells:
        lo, hi = (1, len(ids) - 1) if special else (0, len(ids))
        genes = ids[lo:hi]
        if combos and anchor is not None:
            groups = [[anchor, g] for g in genes if g != anchor]
        elif combos:
            groups = [[a, b] for i, a in enumerate(genes) for b in genes[i + 1:]]
        elif ptype in ("overexpress", "activate"):
            groups = [[g] for g in genes[1:]]
        elif ptype == "inhibit":
            groups = [[g] for g in genes[:-1]]
        else:
            groups = [[g] for g in genes]
        for grp in groups:
            if ptype == "delete":
                new = [t for t in ids if t not in grp]
            elif ptype == "overexpress":
                body = [t for t in genes if t not in grp]
                new = ids[:lo] + grp + body + ids[hi:]
            else:
                n = len(genes)
                d = max(1, rank_shift * n // 4)
                r = genes.index(grp[0])
                rest = [t for t in genes if t != grp[0]]
                # placed right after (inhibit) the gene that held rank r+d, or before (activate) rank r-d
                if ptype == "inhibit":
                    anchor_gene = genes[min(r + d, n - 1)]
                    new_genes = rest[: rest.index(anchor_gene) + 1] + [grp[0]] + rest[rest.index(anchor_gene) + 1:]
                else:
                    anchor_gene = genes[max(r - d, 0)]
                    new_genes = rest[: rest.index(anchor_gene)] + [grp[0]] + rest[rest.index(anchor_gene):]
                new = ids[:lo] + new_genes + ids[hi:]
            val, gcos = oracle(model, ids, new, grp, layer, mode, special, states)
            if anchor is not None:
                key = [g for g in grp if g != anchor][0]
            elif combos:
                key = tuple(sorted(grp))
            else:
                key = grp[0]
            expected.append((key, val, gcos if mode.endswith("_and_gene") else {}))
    return expected


@pytest.mark.parametrize("ptype,rank_shift", [("delete", None), ("overexpress", None), ("inhibit", 1),
                                              ("activate", 2)])
def test_all_mode_v1_types(mini_v1, cells_v1, tmp_path, ptype, rank_shift):
    _run(tmp_path, mini_v1, cells_v1, perturb_type=ptype, perturb_rank_shift=rank_shift, emb_mode="cell_and_gene",
         model_version="V1", clear_mem_ncells=37)
    exp = _all_mode_expected(mini_v1, _cells_in_order(cells_v1), ptype, 2, "cell_and_gene", False, rank_shift)
    _check(_raw(tmp_path, "cell"), _raw(tmp_path, "gene"), exp)


@pytest.mark.parametrize("mode", ["cls", "cls_and_gene", "cell", "cell_and_gene"])
def test_all_mode_v2_emb_modes(mini_v2, cells_v2, tmp_path, mode):
    _run(tmp_path, mini_v2, cells_v2, perturb_type="delete", emb_mode=mode, model_version="V2", emb_layer=0)
    exp = _all_mode_expected(mini_v2, _cells_in_order(cells_v2), "delete", 3, mode, True)
    gene = _raw(tmp_path, "gene") if mode.endswith("_and_gene") else None
    if gene is None:
        assert not glob.glob(str(tmp_path / "*gene_embs*"))
    _check(_raw(tmp_path, "cell"), gene, exp)


def test_overexpress_all_v2_cls_and_gene_labels(mini_v2, cells_v2, tmp_path):
    # the reference labelled these affected genes one position off; they must match by gene
    _run(tmp_path, mini_v2, cells_v2, perturb_type="overexpress", emb_mode="cls_and_gene", model_version="V2")
    exp = _all_mode_expected(mini_v2, _cells_in_order(cells_v2), "overexpress", 2, "cls_and_gene", True)
    _check(_raw(tmp_path, "cell"), _raw(tmp_path, "gene"), exp)


def test_combos_with_and_without_anchor(mini_v1, cells_v1, tmp_path):
    cells = _cells_in_order(cells_v1)
    anchor = cells[-1][3]  # a gene of the shortest cell
    holders = [c for c in cells if anchor in c]
    _run(tmp_path / "a", mini_v1, cells_v1, combos=1, anchor_gene=_ens(anchor, "V1"), emb_mode="cell_and_gene",
         model_version="V1")
    exp = _all_mode_expected(mini_v1, holders, "delete", 2, "cell", False, combos=1, anchor=anchor)
    assert not glob.glob(str(tmp_path / "a" / "*gene_embs*"))  # an anchor gives cell-level shifts only
    _check(_raw(tmp_path / "a", "cell"), None, exp)
    # pairs without an anchor, on the two shortest cells
    small = cells_v1.select([1])
    _run(tmp_path / "b", mini_v1, small, combos=1, emb_mode="cell_and_gene", model_version="V1")
    exp = _all_mode_expected(mini_v1, _cells_in_order(small), "delete", 2, "cell_and_gene", False, combos=1)
    _check(_raw(tmp_path / "b", "cell"), _raw(tmp_path / "b", "gene"), exp)


def _ens(token, version):
    from geneformer.vocab import GeneVocab

    return GeneVocab.load(version).id_to_token[int(token)]


def _group_expected(model, cells, tokens, ptype, layer, mode, special, max_len, rank_shift=None, states=None):
    expected = []
    key = tokens[0] if len(tokens) == 1 else tuple(tokens)
    for ids in cells:
        lo, hi = (1, len(ids) - 1) if special else (0, len(ids))
        genes = ids[lo:hi]
        orig = list(ids)
        if ptype == "delete":
            new = [t for t in ids if t not in tokens]
        elif ptype == "overexpress":
            rest = [t for t in genes if t not in tokens]
            n_absent = sum(t not in genes for t in tokens)
            overflow = max(0, len(ids) + n_absent - max_len)
            if overflow:
                dropped = rest[len(rest) - overflow:]
                rest = rest[: len(rest) - overflow]
                orig = [t for t in ids if t not in dropped]
            new = ids[:lo] + list(tokens) + rest + ids[hi:]
        else:  # one gene inhibited / activated
            return _all_mode_single(model, cells, tokens[0], ptype, layer, mode, special, rank_shift, states)
        val, gcos = oracle(model, orig, new, tokens, layer, mode, special, states)
        expected.append((key, val, gcos if mode.endswith("_and_gene") else {}))
    return expected


def _all_mode_single(model, cells, token, ptype, layer, mode, special, rank_shift, states):
    out = []
    for ids in cells:
        exp = _all_mode_expected(model, [ids], ptype, layer, mode, special, rank_shift, states)
        out += [e for e in exp if e[0] == token]
    return out


def _cells_sharing_genes(path, n_keep=14):
    """Three short cells that share their two most common top genes, and one that lacks them."""
    import datasets

    ds = datasets.load_from_disk(str(path)).select(range(300))
    tops = [list(r)[:n_keep] for r in ds["input_ids"]]
    counts: dict = {}
    for t in tops:
        for g in t:
            counts[g] = counts.get(g, 0) + 1
    first = max(counts, key=lambda g: counts[g])
    co: dict = {}
    for t in tops:
        if first in t:
            for g in t:
                if g != first:
                    co[g] = co.get(g, 0) + 1
    shared = [first, max(co, key=lambda g: co[g])]
    with_both = [t for t in tops if all(g in t for g in shared)][:3]
    without = [t for t in tops if not any(g in t for g in shared)][:1]
    # distinct lengths: drop i genes other than the shared ones from the end of cell i
    cells = [c[: n_keep - i] if all(g in c[: n_keep - i] for g in shared) else
             [g for g in c if g in shared or c.index(g) < n_keep - 2 * i] for i, c in enumerate(with_both)] + without
    return datasets.Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells]}), shared


def test_group_delete_and_overexpress_v1(mini_v1, gold, tmp_path):
    cells_v1, shared = _cells_sharing_genes(gold / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset")
    cells = _cells_in_order(cells_v1)
    genes = [_ens(t, "V1") for t in shared]
    _run(tmp_path / "d", mini_v1, cells_v1, genes_to_perturb=genes, emb_mode="cell_and_gene", model_version="V1")
    holders = [c for c in cells if all(t in c for t in shared)]
    assert len(holders) == 3
    exp = _group_expected(mini_v1, holders, shared, "delete", 2, "cell_and_gene", False, 2048)
    _check(_raw(tmp_path / "d", "cell"), _raw(tmp_path / "d", "gene"), exp)
    # overexpress a present gene and one no cell has: every cell is perturbed, the absent one inserted
    absent = 5000
    assert all(absent not in c for c in cells)
    toks = [absent, shared[1]]
    _run(tmp_path / "o", mini_v1, cells_v1, perturb_type="overexpress", genes_to_perturb=[_ens(t, "V1") for t in toks],
         emb_mode="cell_and_gene", model_version="V1")
    exp = _group_expected(mini_v1, cells, toks, "overexpress", 2, "cell_and_gene", False, 2048)
    _check(_raw(tmp_path / "o", "cell"), _raw(tmp_path / "o", "gene"), exp)


def test_group_overexpress_truncates_full_length_cell(mini_v1, gold, tmp_path):
    """A cell at the model's input size: the inserted gene pushes one gene out of both sides."""
    import datasets

    ds = datasets.load_from_disk(str(gold / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    full = [i for i, n in enumerate(ds["length"]) if n == 2048][:1]
    cell = ds.select(full)
    ids = list(cell[0]["input_ids"])
    toks = [next(t for t in range(5000, 6000) if t not in ids), ids[10]]
    _run(tmp_path, mini_v1, cell, perturb_type="overexpress", genes_to_perturb=[_ens(t, "V1") for t in toks],
         emb_mode="cell_and_gene", model_version="V1")
    exp = _group_expected(mini_v1, [ids], toks, "overexpress", 2, "cell_and_gene", False, 2048)
    gene = _raw(tmp_path, "gene")
    assert len(gene) == 2048 - 2  # both listed genes excluded, one gene dropped by truncation
    _check(_raw(tmp_path, "cell"), gene, exp)


@pytest.mark.parametrize("ptype", ["inhibit", "activate"])
def test_group_inhibit_activate_v2_cls(mini_v2, cells_v2, tmp_path, ptype):
    cells = _cells_in_order(cells_v2)
    gene = cells[0][5]
    holders = [c for c in cells if gene in c]
    _run(tmp_path, mini_v2, cells_v2, perturb_type=ptype, perturb_rank_shift=3, genes_to_perturb=[_ens(gene, "V2")],
         emb_mode="cls_and_gene", model_version="V2")
    exp = _group_expected(mini_v2, holders, [gene], ptype, 2, "cls_and_gene", True, 4096, rank_shift=3)
    _check(_raw(tmp_path, "cell"), _raw(tmp_path, "gene"), exp)


@pytest.mark.parametrize("mode", ["cls", "cell_and_gene"])
def test_goal_state_shifts_v2(mini_v2, cells_v2, tmp_path, mode):
    rng = np.random.default_rng(0)
    states = {"ctrl": torch.tensor(rng.normal(size=64), dtype=torch.float32),
              "stim": torch.tensor(rng.normal(size=64), dtype=torch.float32),
              "other": torch.tensor(rng.normal(size=64), dtype=torch.float32)}
    cst = {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": ["other"]}
    _run(tmp_path, mini_v2, cells_v2, emb_mode=mode, cell_states_to_model=cst, state_embs_dict=states,
         model_version="V2")
    ctrl = cells_v2.filter(lambda r: r["condition"] == "ctrl")
    exp = _all_mode_expected(mini_v2, _cells_in_order(ctrl), "delete", 2, mode, True, states=states)
    _check(_raw(tmp_path, "cell"), _raw(tmp_path, "gene") if mode.endswith("gene") else None, exp, states=states)
    df = pd.read_parquet(tmp_path / "in_silico_delete_t.parquet")
    cell_rows = df[df["affected"].isna()]
    assert set(cell_rows["state"]) == {"ctrl", "stim", "other"}
    assert df.loc[df["affected"].notna(), "state"].isna().all()


def test_forward_first_position_matches_full_forward(mini_v2):
    from geneformer.inference import forward_hidden

    torch.manual_seed(0)
    ids = torch.randint(10, 20000, (3, 40))
    ids[:, 0] = CLS
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    mask[2, 12:] = False
    with torch.inference_mode():
        for layer in (1, 2, 3):
            full, _ = forward_hidden(mini_v2, ids, mask, layer)
            first = forward_first_position(mini_v2, ids, mask, layer)
            torch.testing.assert_close(first, full[:, 0], atol=1e-5, rtol=1e-5)


def test_n_perturbations_matches_positions():
    for special in (False, True):
        for ptype in T.PERTURB_TYPES:
            for combos, anchor in ((0, None), (1, None), (1, 7)):
                s = RunSettings(perturb_type=ptype, combos=combos, anchor_token=anchor, special=special)
                L = 15
                pos = T.all_positions(L, ptype, special=special, combos=combos,
                                      anchor_pos=4 if anchor is not None else None)
                assert n_perturbations(L, s) == len(pos)


# ---------------------------------------------------------------------------------------------
# outputs: tidy table, raw pickles, resume, sharding
# ---------------------------------------------------------------------------------------------
def test_tidy_table_and_raw_agree(mini_v1, cells_v1, tmp_path):
    _, path = _run(tmp_path, mini_v1, cells_v1, emb_mode="cell_and_gene", model_version="V1")
    from geneformer.perturb import read_results

    df = read_results(path)
    assert list(df.columns) == ["perturbed", "perturbed_gene", "perturbed_symbol", "affected", "affected_gene",
                                "affected_symbol", "state", "cell", "row", "cell_id", "cosine_similarity"]
    assert df["affected"].isna().to_numpy()[: (df["affected"].isna()).sum()].all()  # cell-level rows first
    lens = np.asarray(cells_v1["length"])
    order = np.argsort(-lens, kind="stable")
    cell_rows = df[df["affected"].isna()]
    assert cell_rows.groupby("cell")["row"].first().tolist() == order.tolist()
    assert (cell_rows["cell_id"].to_numpy() == np.asarray(cells_v1["cell_id"])[cell_rows["row"]]).all()
    back = R.tidy_to_raw(df)  # the perturber's table converts back as it is
    raw_cell, raw_gene = _raw(tmp_path, "cell"), _raw(tmp_path, "gene")
    assert {k: v for k, v in back.items() if k[1] == "cell_emb"} == dict(raw_cell)
    assert {k: v for k, v in back.items() if k[1] != "cell_emb"} == dict(raw_gene)
    assert not (tmp_path / "in_silico_delete_t_parts").exists()  # parts removed after the merge


def _tables_equal(a, b):
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb)


def test_resume_after_interruption_gives_identical_output(mini_v1, cells_v1, tmp_path, monkeypatch):
    kw = dict(emb_mode="cell_and_gene", model_version="V1", clear_mem_ncells=15)
    _run(tmp_path / "full", mini_v1, cells_v1, **kw)

    calls = []

    def crash(i):
        calls.append(i)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(P, "_part_done_hook", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "resumed", mini_v1, cells_v1, **kw)
    parts_dir = tmp_path / "resumed" / "in_silico_delete_t_parts"
    assert sorted(p.name for p in parts_dir.glob("part-*.parquet")) == [f"part-{i:06d}.parquet" for i in range(3)]
    assert not (tmp_path / "resumed" / "in_silico_delete_t.parquet").exists()
    import json

    manifest = json.loads((parts_dir / "manifest.json").read_text())
    assert sorted(manifest["parts"]) == ["0", "1", "2"] and manifest["parts"]["0"]["cells"] == [0]

    # the rerun only computes the missing parts
    monkeypatch.setattr(P, "_part_done_hook", lambda i: calls.append(i))
    calls.clear()
    _run(tmp_path / "resumed", mini_v1, cells_v1, **kw)
    n_parts = -(-sum(n_perturbations(int(n), RunSettings()) for n in cells_v1["length"]) // 15)
    assert calls == list(range(3, n_parts))
    _tables_equal(tmp_path / "full" / "in_silico_delete_t.parquet",
                  tmp_path / "resumed" / "in_silico_delete_t.parquet")
    for kind in ("cell", "gene"):
        assert _raw(tmp_path / "full", kind) == _raw(tmp_path / "resumed", kind)

    # a finished run is not recomputed
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(P, "run_part", boom)
    _run(tmp_path / "resumed", mini_v1, cells_v1, **kw)


def test_resume_refuses_other_settings(mini_v1, cells_v1, tmp_path, monkeypatch):
    kw = dict(emb_mode="cell_and_gene", model_version="V1", clear_mem_ncells=15)

    def crash(i):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(P, "_part_done_hook", crash)
    with pytest.raises(RuntimeError):
        _run(tmp_path, mini_v1, cells_v1, **kw)
    monkeypatch.setattr(P, "_part_done_hook", lambda i: None)
    with pytest.raises(ValueError, match=r"different run.*--no-resume"):
        _run(tmp_path, mini_v1, cells_v1, **{**kw, "emb_mode": "cell"})
    _run(tmp_path, mini_v1, cells_v1, resume=False, **{**kw, "emb_mode": "cell"})
    assert not glob.glob(str(tmp_path / "*gene_embs*"))


def test_sharded_run_matches_single_process(mini_v1, cells_v1, tmp_path, monkeypatch):
    kw = dict(emb_mode="cell_and_gene", model_version="V1", clear_mem_ncells=20)
    _run(tmp_path / "single", mini_v1, cells_v1, **kw)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    isp = InSilicoPerturber(progress=False, **kw)
    assert isp.perturb_data(mini_v1, cells_v1, tmp_path / "shard", "t") is None
    rank1 = {int(p.name[5:11]) for p in (tmp_path / "shard" / "in_silico_delete_t_parts").glob("part-*")}
    monkeypatch.setenv("RANK", "0")
    rank0: list = []
    monkeypatch.setattr(P, "_part_done_hook", rank0.append)
    path = InSilicoPerturber(progress=False, **kw).perturb_data(mini_v1, cells_v1, tmp_path / "shard", "t")
    # the parts are dealt by cost: each computed once, by one of the two ranks, both ranks busy
    assert rank1 and rank0 and not rank1 & set(rank0)
    assert sorted(rank1 | set(rank0)) == list(range(len(rank1) + len(rank0)))
    _tables_equal(tmp_path / "single" / "in_silico_delete_t.parquet", path)


def test_nproc_sets_the_forward_threads_and_restores_them(mini_v1, cells_v1, tmp_path, monkeypatch):
    seen = []
    real = P.run_part

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(P, "run_part", spy)
    before = torch.get_num_threads()
    kw = dict(emb_mode="cell", model_version="V1", clear_mem_ncells=40)
    _run(tmp_path / "one", mini_v1, cells_v1, nproc=1, **kw)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    seen.clear()
    _run(tmp_path / "many", mini_v1, cells_v1, nproc=10_000, **kw)  # capped at the CPUs this process may use
    assert set(seen) == {len(os.sched_getaffinity(0))}
    assert torch.get_num_threads() == before
    for k, v in _raw(tmp_path / "one", "cell").items():
        np.testing.assert_allclose(_raw(tmp_path / "many", "cell")[k], v, atol=1e-6)
    with pytest.raises(ValueError, match="nproc"):
        InSilicoPerturber(nproc=0, emb_mode="cell", model_version="V1")


def test_core_functions_match_the_reference_class(mini_v1, cells_v1, tmp_path):
    from geneformer.perturb import perturbation_spec, run_perturbation

    kw = dict(emb_mode="cell_and_gene", model_version="V1", clear_mem_ncells=25)
    _, ref = _run(tmp_path / "class", mini_v1, cells_v1, **kw)
    spec = perturbation_spec("delete", "all", emb_mode="cell_and_gene", vocab="V1", rows_per_part=25)
    path = run_perturbation(mini_v1, cells_v1, tmp_path / "core", "t", spec, progress=False)
    _tables_equal(ref, path)
    for kind in ("cell", "gene"):
        assert _raw(tmp_path / "class", kind) == _raw(tmp_path / "core", kind)
    # the resolution: a gene list drops anchor and combos; an anchor drops the gene level
    group = perturbation_spec("delete", LIST_GENES, combos=1, anchor_gene=LIST_GENES[0], emb_mode="cell",
                              vocab="V1")
    assert group.tokens == (17276, 1876, 9969) and group.combos == 0 and group.anchor_token is None
    pair = perturbation_spec("delete", combos=1, anchor_gene=LIST_GENES[0], emb_mode="cell_and_gene", vocab="V1")
    assert pair.emb_mode == "cell" and pair.anchor_token == 17276 and pair.tokens is None
    for bad, match in [(dict(emb_mode="gene"), "emb_mode must be one of"), (dict(batch_size=0), "batch_size"),
                       (dict(rows_per_part=0), "rows_per_part"), (dict(emb_layer=1), "emb_layer")]:
        with pytest.raises(ValueError, match=match):
            perturbation_spec(**{"emb_mode": "cell", "vocab": "V1", **bad})


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_genes_missing_from_vocabulary_are_listed():
    with pytest.raises(KeyError, match="NOT_A_GENE.*ENSG99999999999|2 gene"):
        InSilicoPerturber(genes_to_perturb=["ENSG00000198851", "NOT_A_GENE", "ENSG99999999999"], model_version="V1",
                          emb_mode="cell")


def test_bad_states(mini_v2, cells_v2, tmp_path):
    embs = {s: torch.zeros(64) for s in ("ctrl", "stim", "nope")}
    with pytest.raises(KeyError, match="celltype"):
        _run(tmp_path, mini_v2, cells_v2, cell_states_to_model={**KANG_STATES, "state_key": "celltype"},
             state_embs_dict=embs)
    with pytest.raises(ValueError, match="start_state 'nope'"):
        _run(tmp_path, mini_v2, cells_v2, cell_states_to_model={**KANG_STATES, "start_state": "nope"},
             state_embs_dict=embs)
    with pytest.raises(KeyError, match="no embedding for state"):
        InSilicoPerturber(cell_states_to_model=KANG_STATES, state_embs_dict={"ctrl": torch.zeros(64)})
    with pytest.raises(ValueError, match="state_embs_dict"):
        InSilicoPerturber(cell_states_to_model=KANG_STATES)


def test_anchor_absent_from_every_cell(mini_v1, cells_v1, tmp_path):
    with pytest.raises(ValueError, match="anchor gene .* not expressed"):
        _run(tmp_path, mini_v1, cells_v1, combos=1, anchor_gene=_ens(5000, "V1"), emb_mode="cell",
             model_version="V1")
    with pytest.raises(ValueError, match="needs combos=1"):
        InSilicoPerturber(anchor_gene=_ens(5000, "V1"), emb_mode="cell", model_version="V1")


def test_genes_expressed_by_no_cell(mini_v1, cells_v1, tmp_path):
    with pytest.raises(ValueError, match="No cell expresses all.*overexpress"):
        _run(tmp_path, mini_v1, cells_v1, genes_to_perturb=[_ens(5000, "V1")], emb_mode="cell", model_version="V1")


def test_model_vocabulary_mismatch(gold, mini_v1, cells_v1, cells_v2, tmp_path):
    from geneformer._utils import InputError
    from geneformer.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="vocab_size"):  # V1 model, V2 dictionary (the default)
        _run(tmp_path, gold / "models" / "mini-V1", cells_v1, emb_mode="cell")
    with pytest.raises(InputError, match="V2"):  # V2-tokenized cells, V1 model
        _run(tmp_path, mini_v1, cells_v2, emb_mode="cell", model_version="V1")
    with pytest.raises(ValueError, match="<cls>"):
        InSilicoPerturber(emb_mode="cls", model_version="V1")
    with pytest.raises(ValueError, match="perturb_rank_shift"):
        InSilicoPerturber(perturb_type="inhibit", emb_mode="cell")
    with pytest.raises(ValueError, match="perturb_type"):
        InSilicoPerturber(perturb_type="knockout")


# ---------------------------------------------------------------------------------------------
# short API, high-level class and CLI
# ---------------------------------------------------------------------------------------------
def test_perturb_api_on_anndata(mini_v1, data_dir):
    import anndata as ad

    from geneformer.api import Geneformer, GeneformerConfig
    from geneformer.perturb import perturb

    adata = ad.read_h5ad(data_dir / "pbmc3k_raw_seurat_labels.h5ad")[:40].copy()
    df = perturb(adata, mini_v1, ["LYZ"], "overexpress", emb_mode="cell", max_ncells=5, progress=False)
    assert {"perturbed_gene", "perturbed_symbol", "cell_id", "row", "cosine_similarity"} <= set(df.columns)
    assert (df["perturbed_symbol"] == "LYZ").all() and len(df) == 5
    assert (df["cell_id"].to_numpy() == adata.obs_names[df["row"].to_numpy()]).all()
    gf = Geneformer(GeneformerConfig(model_name="mini", vocab="V1", batch_size=None), model=mini_v1)
    df2 = gf.perturb(adata, ["LYZ"], "overexpress", emb_mode="cell", max_ncells=5, progress=False)
    np.testing.assert_allclose(df2["cosine_similarity"], df["cosine_similarity"], atol=1e-6)


def test_classifier_model_types_use_the_same_encoder(gold, cells_v1, tmp_path):
    kw = dict(emb_mode="cell", model_version="V1")
    _run(tmp_path / "p", gold / "models" / "mini-V1", cells_v1, **kw)
    _run(tmp_path / "c", gold / "models" / "mini-V1", cells_v1, model_type="CellClassifier", num_classes=3, **kw)
    _run(tmp_path / "g", gold / "models" / "mini-V1", cells_v1, model_type="GeneClassifier", num_classes=2, **kw)
    ref = _raw(tmp_path / "p", "cell")
    for sub in ("c", "g"):
        mine = _raw(tmp_path / sub, "cell")
        assert set(mine) == set(ref)
        for k in ref:
            np.testing.assert_allclose(mine[k], ref[k], atol=1e-6)


def test_perturb_api_computes_state_embeddings(mini_v2, cells_v2, tmp_path):
    from geneformer.perturb import perturb

    df = perturb(cells_v2, mini_v2, "all", state_key="condition", start_state="ctrl", goal_state="stim",
                 output_dir=tmp_path, prefix="goal", progress=False)
    from geneformer.embeddings import load_state_embs

    saved = load_state_embs(tmp_path / "state_embs.safetensors")  # ours: safetensors, not a pickle
    assert list(saved) == ["ctrl", "stim"] and saved["ctrl"].ndim == 1
    import json  # the run records its vocabulary for perturb-stats to check

    meta = json.loads((tmp_path / "in_silico_delete_goal_vocab.json").read_text())
    assert meta == {"model_version": "V2", "vocab_size": mini_v2.config.vocab_size}
    assert set(df["state"]) == {"ctrl", "stim"} and df["affected"].isna().all()
    n_ctrl = sum(c == "ctrl" for c in cells_v2["condition"])
    assert df["cell"].nunique() == n_ctrl
    assert df["perturbed_gene"].str.startswith("ENSG").all()


def test_cli_perturb(gold, cells_v1, tmp_path):
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    data = tmp_path / "cells.dataset"
    cells_v1.save_to_disk(str(data))
    runner = CliRunner()
    res = runner.invoke(app, ["perturb", str(data), "--model", str(gold / "models" / "mini-V1"), "--output",
                              str(tmp_path / "out"), "--prefix", "cli", "--emb-mode", "cell_and_gene", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "in_silico_delete_cli.parquet").is_file()
    assert (tmp_path / "out" / "in_silico_delete_cli_dict_cell_embs_raw.pickle").is_file()
    res = runner.invoke(app, ["perturb", str(data), "--model", str(gold / "models" / "mini-V1"), "--output",
                              str(tmp_path / "out"), "--prefix", "bad", "--genes", "NOT_A_GENE", "-q"])
    assert res.exit_code == 2 and "NOT_A_GENE" in res.output
    res = runner.invoke(app, ["perturb", "--help"])
    assert res.exit_code == 0 and "--state-key" in res.output


def test_genes_absent_because_of_another_vocabulary_say_so(mini_v1, cells_v2, tmp_path):
    """V2 cells, a V1 model, a named gene: the vocabulary mismatch, not "no cell expresses LYZ"."""
    from geneformer._utils import InputError

    with pytest.raises(InputError, match="tokenized with the V2 vocabulary"):
        _run(tmp_path, mini_v1, cells_v2, genes_to_perturb=["ENSG00000090382"], model_version="V1", emb_mode="cell")
