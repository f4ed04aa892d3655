"""The statistics modes as functions over :class:`~._results.RawShifts`, and the gene-name lookup
they label genes with (see ``_stats_run`` for the modes' outputs and the differences from the
reference).

Perturbed keys are ints (one gene) or tuples (a group or a pair); ``anchor`` means the
"gene mode" of an anchor without combos: the effect of perturbing the anchor on each other gene,
read from the ``(anchor, gene)`` keys.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ._results import RawShifts, normalize_key
from ._stats import _group_mean, _ImpactModel, bh_fdr, ranksums_per_group, ranksums_vs_pool

#: Size of the pooled null distribution of goal_state_shift (subsampled with ``random.seed(42)``).
NULL_POOL_MAX = 100_000

__all__ = [
    "GeneNames", "aggregate_data", "aggregate_gene_shifts", "gene_names", "goal_state_shift",
    "mixture_model", "mixture_model_combos", "vs_null",
]


# ---------------------------------------------------------------------------------------------
# gene names
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneNames:
    """Token ↔ Ensembl ID ↔ symbol lookups (NaN for an unknown gene, as the reference's tables)."""

    token_to_ensembl: dict[int, str]
    ensembl_to_token: dict[str, int]
    ensembl_to_symbol: dict[str, str]
    version: str = ""

    def ensembl(self, token: int):
        return self.token_to_ensembl.get(int(token), np.nan)

    def symbol(self, token: int):
        ens = self.token_to_ensembl.get(int(token))
        return self.ensembl_to_symbol.get(ens, np.nan) if ens is not None else np.nan

    def tokens(self, genes: Sequence[str]) -> list[int]:
        """Tokens of Ensembl IDs; raises listing every gene not in the token dictionary."""
        missing = [g for g in genes if g not in self.ensembl_to_token]
        if missing:
            raise KeyError(f"Gene(s) {missing} are not in the {self.version} token dictionary; "
                           "give Ensembl IDs of vocabulary genes.")
        return [int(self.ensembl_to_token[g]) for g in genes]


def gene_names(
    vocab: Any = "V2",
    token_dictionary_file: Any = None,
    gene_name_id_file: Any = None,
) -> GeneNames:
    """The lookups of a vocabulary ("V1"/"V2" or a ``GeneVocab``); the dictionary files, when given,
    replace the vocabulary's token and symbol dictionaries."""
    from .._utils import check_model_version
    from ..vocab import GeneVocab, load_dict_file, resolve_dict_file

    if isinstance(vocab, GeneVocab):
        version, token_dict, name_id = vocab.version or "V2", vocab.token_dict, vocab.gene_name_id
    else:
        version = check_model_version(vocab)
        if token_dictionary_file is None or gene_name_id_file is None:
            loaded = GeneVocab.load(version)
            token_dict, name_id = loaded.token_dict, loaded.gene_name_id
    if token_dictionary_file is not None:
        token_dict = {str(k): int(v) for k, v in load_dict_file(
            resolve_dict_file("token_dictionary", version, token_dictionary_file)).items()}
    if gene_name_id_file is not None:
        name_id = load_dict_file(resolve_dict_file("gene_name_id", version, gene_name_id_file))
    # the symbol of an Ensembl ID named by several symbols is the last one listed (as the reference)
    ens_to_sym = {v: k for k, v in name_id.items()}
    return GeneNames({v: k for k, v in token_dict.items()}, dict(token_dict), ens_to_sym, version)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _obj(items) -> np.ndarray:
    return np.fromiter(items, dtype=object, count=len(items))


def _sort_genes(keys) -> list:
    return sorted(keys, key=lambda k: (1, k) if isinstance(k, tuple) else (0, (k,)))


def _code_of(shifts: RawShifts, key) -> int:
    """Code of a perturbed key (a tuple matches a stored tuple of the same genes in any order)."""
    key = normalize_key(key)
    try:
        return shifts.keys.index(key)
    except ValueError:
        pass
    if isinstance(key, tuple):
        for i, k in enumerate(shifts.keys):
            if isinstance(k, tuple) and set(k) == set(key) and len(k) == len(key):
                return i
    raise KeyError(f"No results for perturbed token(s) {key} in this folder; it holds "
                   f"{len(shifts.keys)} perturbed keys (e.g. {shifts.keys[:3]}).")


def _group_key(tokens: Sequence[int]):
    return tokens[0] if len(tokens) == 1 else tuple(tokens)


def gene_table(genes: list, names: GeneNames, *, group: bool = False) -> pd.DataFrame:
    """``Gene``, ``Gene_name``, ``Ensembl_ID`` of perturbed keys (``group``: a gene list was given)."""
    symbols, ids = [], []
    for g in genes:
        if isinstance(g, tuple):
            symbols.append(tuple(names.symbol(t) for t in g))
            # the reference takes element [1] of tuple keys in "all" mode
            ids.append(tuple(names.ensembl(t) for t in g) if group else names.ensembl(g[1]))
        else:
            symbols.append(names.symbol(g))
            ids.append(names.ensembl(g))
    return pd.DataFrame({"Gene": _obj(genes), "Gene_name": _obj(symbols), "Ensembl_ID": _obj(ids)})


def _anchor_mask(shifts: RawShifts, anchor: int) -> np.ndarray:
    return (shifts.affected >= 0) & (shifts.perturbed == _code_of(shifts, anchor))


def _per_gene(shifts: RawShifts, genes: list, *, anchor: int | None = None, state: Any = None):
    """Gene index (into ``genes``) and value of each value measuring a gene's effect."""
    if anchor is not None:
        mask = _anchor_mask(shifts, anchor)
        tokens = np.asarray(genes, dtype=np.int64)
        affected, vals = shifts.affected[mask], shifts.value[mask]
        gidx = np.minimum(np.searchsorted(tokens, affected), max(len(tokens) - 1, 0))
        known = tokens[gidx] == affected if len(tokens) else np.zeros(affected.shape, bool)
        return gidx[known], vals[known]
    mask = shifts.affected < 0
    if state is not None:
        mask &= shifts.state == state
    codes, vals = shifts.perturbed[mask], shifts.value[mask]
    pos = {normalize_key(k): i for i, k in enumerate(genes)}
    lookup = np.fromiter((pos.get(k, -1) for k in shifts.keys), dtype=np.int64, count=len(shifts.keys))
    gidx = lookup[codes]
    keep = gidx >= 0
    return gidx[keep], vals[keep]


def _gene_list(shifts: RawShifts, *, anchor: int | None = None) -> list:
    if anchor is not None:
        return [int(t) for t in np.unique(shifts.affected[_anchor_mask(shifts, anchor)])]
    present = np.unique(shifts.perturbed[shifts.affected < 0])
    return _sort_genes([shifts.keys[c] for c in present])


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------
def goal_state_shift(shifts: RawShifts, names: GeneNames, cell_states: dict,
                     tokens: Sequence[int] | None = None) -> pd.DataFrame:
    """Per perturbed gene: mean shift towards the goal and alternative states, rank-sum p-values
    against all genes' shifts pooled, FDR, detections, ``Sig``; for a group (``tokens``) the mean
    shifts of the group only."""
    goal, alts = cell_states["goal_state"], cell_states["alt_states"]
    if tokens is not None:
        code = _code_of(shifts, _group_key(tokens))
        row = {}
        for col, st in [("Shift_to_goal_end", goal)] + [(f"Shift_to_alt_end_{a}", a) for a in alts]:
            sel = (shifts.perturbed == code) & (shifts.affected < 0) & (shifts.state == st)
            row[col] = float(np.mean(shifts.value[sel])) if sel.any() else np.nan
        return pd.DataFrame([row])
    genes = _gene_list(shifts)
    n_g = len(genes)
    df = gene_table(genes, names)
    means, pvals, n_goal = {}, {}, None
    for st in [goal, *alts]:
        gidx, vals = _per_gene(shifts, genes, state=st)
        mean, n = _group_mean(gidx, vals, n_g)
        pool = vals[np.argsort(gidx, kind="stable")]  # gene-list order, then list order
        if pool.size > NULL_POOL_MAX:
            random.seed(42)
            pool = np.asarray(random.sample(pool.tolist(), k=NULL_POOL_MAX))
        p = ranksums_vs_pool(pool, gidx, vals, n_g)
        p[n == 0] = 1.0
        means[st], pvals[st] = mean, p
        if st == goal:
            n_goal = n
    df["Shift_to_goal_end"] = means[goal]
    for a in alts:
        df[f"Shift_to_alt_end_{a}"] = means[a]
    df["Goal_end_vs_random_pval"] = pvals[goal]
    for a in alts:
        df[f"Alt_end_vs_random_pval_{a}"] = pvals[a]
    df["Goal_end_FDR"] = bh_fdr(pvals[goal])
    for a in alts:
        df[f"Alt_end_FDR_{a}"] = bh_fdr(pvals[a])
    df["N_Detections"] = n_goal
    df["Sig"] = (df["Goal_end_FDR"] < 0.05).astype(int)
    return df.sort_values(["Sig", "Shift_to_goal_end", "Goal_end_FDR"], ascending=[False, False, True], kind="stable")


def vs_null(shifts: RawShifts, null: RawShifts, names: GeneNames, *, goal_state: Any = None,
            anchor: int | None = None, group: bool = False) -> pd.DataFrame:
    """Per gene: test and null mean shifts, the rank-sum p-value of test against null values, FDR
    (``goal_state``: of the shifts towards it)."""
    genes = _gene_list(shifts, anchor=anchor)
    n_g = len(genes)
    df = gene_table(genes, names, group=group)
    tg, tv = _per_gene(shifts, genes, anchor=anchor, state=goal_state)
    ng, nv = _per_gene(null, genes, anchor=anchor, state=goal_state)
    t_mean, t_n = _group_mean(tg, tv, n_g)
    n_mean, n_n = _group_mean(ng, nv, n_g)
    p = ranksums_per_group(tg, tv, ng, nv, n_g)
    p = np.where(np.isnan(p), 1.0, p)
    df["Test_avg_shift"] = t_mean
    df["Null_avg_shift"] = n_mean
    df["Test_vs_null_avg_shift"] = t_mean - n_mean
    df["Test_vs_null_pval"] = p
    df["Test_vs_null_FDR"] = bh_fdr(p)
    df["N_Detections_test"] = t_n.astype(np.uint32)
    df["N_Detections_null"] = n_n.astype(np.uint32)
    df["Sig"] = (df["Test_vs_null_FDR"] < 0.05).astype(int)
    return df.sort_values(["Sig", "Test_vs_null_avg_shift", "Test_vs_null_FDR"], ascending=[False, False, True],
                          kind="stable")


def _with_impact(df: pd.DataFrame, gidx: np.ndarray, vals: np.ndarray, mean: np.ndarray, n: np.ndarray) -> None:
    """Add the impact component of each gene's mean and the percentage of its values in it."""
    impact = _ImpactModel.fit(mean[n > 0])
    df["Impact_component"] = impact(mean)
    df["Impact_component_percent"] = 100.0 * _group_mean(gidx, impact(vals).astype(np.float64), len(df))[0]
    df["N_Detections"] = n


def mixture_model(shifts: RawShifts, names: GeneNames, *, anchor: int | None = None) -> pd.DataFrame:
    """Per gene: mean cosine similarity and its impact component (two-component Gaussian mixture)."""
    genes = _gene_list(shifts, anchor=anchor)
    df = gene_table(genes, names)
    gidx, vals = _per_gene(shifts, genes, anchor=anchor)
    mean, n = _group_mean(gidx, vals, len(genes))
    df["Test_avg_shift"] = mean
    _with_impact(df, gidx, vals, mean, n)
    return df.sort_values(["Impact_component", "Test_avg_shift"], ascending=[False, True], kind="stable")


def legacy_triples(dicts: list[dict]) -> dict | None:
    """Merged {gene: [(anchor, token, combo), ...]} if the values are legacy triples, else None."""
    first = next((v[0] for d in dicts for v in d.values() if v), None)
    if not isinstance(first, (tuple, list, np.ndarray)):
        return None
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(k, tuple) and len(k) == 2 and k[1] == "cell_emb":
                out.setdefault(normalize_key(k[0]), []).extend(v)
    return out


def mixture_model_combos(pairs: RawShifts | dict, names: GeneNames, anchor_token: int,
                         single: RawShifts | None = None) -> pd.DataFrame:
    """The anchor + gene pairs against the sum of the individual shifts, with the impact model.

    ``pairs``: the pair results (keyed by the non-anchor gene) with ``single`` the single-gene
    results of the same cells, or legacy ``{gene: [(anchor, token, combo), ...]}`` triples.
    """
    if isinstance(pairs, dict):
        genes = _sort_genes(pairs)
        vals = [np.asarray(pairs[g], dtype=np.float64).reshape(-1, 3) for g in genes]
        gidx = np.repeat(np.arange(len(genes)), [v.shape[0] for v in vals])
        allv = np.concatenate(vals) if vals else np.zeros((0, 3))
        a_mean = _group_mean(gidx, allv[:, 0], len(genes))[0]
        t_mean = _group_mean(gidx, allv[:, 1], len(genes))[0]
        combo_vals = allv[:, 2]
    else:
        genes = _gene_list(pairs)
        gidx, combo_vals = _per_gene(pairs, genes)
        if single is None:
            raise ValueError("combos=1 statistics need the single-gene results of the same cells as "
                             "null_dist_data_directory (or null_dict_list) for the individual shifts.")
        s_genes = _gene_list(single)
        s_idx, s_vals = _per_gene(single, s_genes)
        lookup = dict(zip(s_genes, _group_mean(s_idx, s_vals, len(s_genes))[0]))
        if anchor_token not in lookup:
            raise KeyError(f"The single-gene results hold no cell-level value for the anchor "
                           f"{names.ensembl(anchor_token)}.")
        a_mean = np.full(len(genes), lookup[anchor_token])
        t_mean = np.array([lookup.get(g, np.nan) for g in genes], dtype=np.float64)
    df = gene_table(genes, names)
    c_mean, n = _group_mean(gidx, combo_vals, len(genes))
    sum_indiv = 1 - ((1 - a_mean) + (1 - t_mean))
    df["Anchor_shift"] = a_mean
    df["Test_token_shift"] = t_mean
    df["Sum_of_indiv_shifts"] = sum_indiv
    df["Combo_shift"] = c_mean
    df["Combo_minus_sum_shift"] = c_mean - sum_indiv
    _with_impact(df, gidx, combo_vals, c_mean, n)
    return df.sort_values(["Combo_minus_sum_shift"], ascending=[True], kind="stable")


def aggregate_data(shifts: RawShifts, names: GeneNames, tokens: Sequence[int]) -> pd.DataFrame:
    """One row per cell value of the group perturbation of ``tokens`` (``Cosine_sim``, ``Gene``)."""
    code = _code_of(shifts, _group_key(tokens))
    sel = (shifts.perturbed == code) & (shifts.affected < 0)
    name = gene_table([shifts.keys[code]], names)["Gene_name"].iloc[0]
    labels = np.empty(int(sel.sum()), dtype=object)
    labels[:] = [name] * labels.size
    df = pd.DataFrame({"Cosine_sim": shifts.value[sel], "Gene": labels})
    if shifts.state is not None:
        df["State"] = shifts.state[sel]
    return df


def aggregate_gene_shifts(shifts: RawShifts, names: GeneNames, *, anchor_token: int | None = None,
                          group: bool = False) -> pd.DataFrame:
    """Mean, population std and count of every (perturbed, affected) key (of the anchor's keys
    only with ``anchor_token``), cell-level rows first, then by mean."""
    keep = shifts.perturbed == _code_of(shifts, anchor_token) if anchor_token is not None else \
        np.ones(len(shifts), dtype=bool)
    p, a, v = shifts.perturbed[keep], shifts.affected[keep], shifts.value[keep]
    s = shifts.state[keep] if shifts.state is not None else None
    # one integer per (state, perturbed, affected) key; groups numbered by first appearance
    key = p * (int(a.max(initial=-1)) + 2) + (a + 1)
    if s is not None:
        s_codes = pd.factorize(pd.Series(s).fillna("\0").to_numpy())[0]
        key = key * (int(s_codes.max(initial=0)) + 1) + s_codes
    gid, _ = pd.factorize(key, sort=False)
    n_grp = int(gid.max()) + 1 if gid.size else 0
    first = np.full(n_grp, gid.size, dtype=np.int64)
    np.minimum.at(first, gid, np.arange(gid.size))
    mean, n = _group_mean(gid, v, n_grp)
    dev = v - mean[gid]
    std = np.sqrt(np.bincount(gid, weights=dev * dev, minlength=n_grp) / n)
    # rows are numbered by perturbed gene (gene-list order), then gene-level keys in order of
    # first appearance, then the cell-level key (the numbering of the reference's outputs)
    genes = _sort_genes([shifts.keys[c] for c in np.unique(p)])
    code_of = {k: c for c, k in enumerate(shifts.keys)}
    rank = np.full(len(shifts.keys), -1, dtype=np.int64)
    rank[[code_of[g] for g in genes]] = np.arange(len(genes))
    g_p, g_a = p[first], a[first]
    order = np.lexsort((first, g_a < 0, rank[g_p]))
    g_p, g_a, gi = g_p[order], g_a[order], rank[g_p[order]]
    table = gene_table(genes, names, group=group)
    perturbed = shifts.key_array()[g_p]
    if not any(isinstance(k, tuple) for k in genes):
        perturbed = perturbed.astype(np.int64)
    # affected names through the distinct tokens only
    u_tok, u_inv = np.unique(g_a, return_inverse=True)
    u_aff = _obj(["cell_emb" if t < 0 else int(t) for t in u_tok])
    u_name = _obj([np.nan if t < 0 else names.symbol(t) for t in u_tok])
    u_ens = _obj([np.nan if t < 0 else names.ensembl(t) for t in u_tok])
    df = pd.DataFrame(
        {
            "Perturbed": perturbed,
            "Gene_name": table["Gene_name"].to_numpy()[gi],
            "Ensembl_ID": table["Ensembl_ID"].to_numpy()[gi],
            "Affected": u_aff[u_inv],
            "Affected_gene_name": u_name[u_inv],
            "Affected_Ensembl_ID": u_ens[u_inv],
        }
    )
    if s is not None:
        df["State"] = s[first][order]
    df["Cosine_sim_mean"] = mean[order]
    df["Cosine_sim_stdev"] = std[order]
    df["N_Detections"] = n[order]
    # cell-level rows first, then by mean cosine (stable: ties keep the row numbering)
    sort_order = np.lexsort((df["Cosine_sim_mean"].to_numpy(), g_a >= 0))
    return df.iloc[sort_order]
