"""Statistics over in silico perturbation results (:class:`InSilicoPerturberStats`).

Reads the perturber's ``*_raw.pickle`` files (see :mod:`geneformer.perturb.results`) into flat
arrays and computes every statistic with numpy / pandas group-bys, so the cost is linear in the
number of stored values (the reference scanned every key once per gene).

Modes (output ``{output_directory}/{output_prefix}.csv``, written with its index):

``goal_state_shift``
    Per perturbed gene: mean shift towards the goal (and alternative) states, Wilcoxon rank-sum
    p-value against all genes' shifts pooled (subsampled to 100,000 with ``random.seed(42)``),
    Benjamini-Hochberg FDR, detections, ``Sig`` (FDR < 0.05). For a group perturbation: a one-row
    table of the mean shifts.
``vs_null``
    Per gene: test vs null mean, rank-sum p-value of test against null values, FDR.
``mixture_model``
    Two-component Gaussian mixture (sklearn, ``random_state=0``) fitted on the per-gene mean
    cosine similarities; the lower-mean component is the "impact" component.
``aggregate_data``
    One row per cell value of the group perturbation (``Cosine_sim``, ``Gene``).
``aggregate_gene_shifts``
    Mean / population std / count of every (perturbed, affected) key, cell-level rows first.

Differences from the reference
------------------------------
- Mixture model: the components are ordered by their means, so the impact component is the one
  with the lower mean whatever order sklearn returns them in (the reference assumed component 0).
- ``combos=1`` works with what the perturber writes: pair results keyed by the non-anchor gene.
  The individual shifts come from a single-gene run of the same cells given as the null folder /
  ``null_dict_list`` (anchor shift from ``(anchor, "cell_emb")``, gene shift from
  ``(gene, "cell_emb")``). Legacy ``(anchor, token, combo)`` value triples are still accepted.
  (The reference expected triples that the perturber never writes, a dead path.)
- With ``cell_states_to_model``, gene-level pickles in the same folder are skipped instead of
  crashing the state-indexed merge; files are classified by content, not by suffix.
- ``aggregate_data`` works for multi-gene lists (the reference failed with "Length of values (3)
  does not match length of index (20)"): ``Gene`` holds the group's symbols for every value.
- Tokens are Python ints, so tuple keys print as ``(17276, 1876, 9969)`` rather than
  ``(np.int16(17276), ...)``; genes missing from the vocabulary raise ``KeyError`` instead of
  becoming ``None``; explicit dictionary files win over ``model_version`` (which only picks the
  defaults); errors are ``ValueError`` / ``KeyError`` / ``FileNotFoundError`` with messages.
- Files are merged in file-name order (the reference used ``os.listdir`` order, which only
  changes the order of concatenated lists: the 100,000-value null subsample and equal-value ties).
  ``aggregate_gene_shifts`` numbers its rows gene-level keys first, as the reference's output.
- ``vs_null`` with cell states compares the goal-state shifts; ``aggregate_gene_shifts`` with
  states adds a ``State`` column to the cell-level rows. ``mixture_model`` with states is refused
  (its impact rule assumes cosine similarities).
- The CSV is written atomically and the output folder is created; :meth:`get_stats` also
  returns the table.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .._constants import STATS_MODES
from .._utils import check_cell_states
from ..perturb import RawShifts, bh_fdr, load_raw, ranksums_per_group, ranksums_vs_pool, read_raw_dir
from ..perturb._results import RAW_SUFFIX, iter_raw_dir, normalize_key
from ..perturb._stats import _group_mean

logger = logging.getLogger(__name__)

NULL_POOL_MAX = 100_000

__all__ = ["InSilicoPerturberStats"]


# ---------------------------------------------------------------------------------------------
# vocabulary view
# ---------------------------------------------------------------------------------------------
@dataclass
class _Names:
    token_to_ensembl: dict[int, str]
    ensembl_to_token: dict[str, int]
    ensembl_to_symbol: dict[str, str]

    def ensembl(self, token: int):
        return self.token_to_ensembl.get(int(token), np.nan)

    def symbol(self, token: int):
        ens = self.token_to_ensembl.get(int(token))
        return self.ensembl_to_symbol.get(ens, np.nan) if ens is not None else np.nan


def _load_names(model_version: str, token_file, name_file) -> _Names:
    from .._utils import check_model_version
    from ..vocab import GeneVocab, load_dict_file, resolve_dict_file

    version = check_model_version(model_version)
    if token_file is None or name_file is None:
        vocab = GeneVocab.load(version)
        token_dict, name_id = vocab.token_dict, vocab.gene_name_id
    if token_file is not None:
        token_dict = {str(k): int(v) for k, v in load_dict_file(resolve_dict_file("token_dictionary", version,
                                                                                   token_file)).items()}
    if name_file is not None:
        name_id = load_dict_file(resolve_dict_file("gene_name_id", version, name_file))
    # the symbol of an Ensembl ID named by several symbols is the last one listed (as the reference)
    ens_to_sym = {v: k for k, v in name_id.items()}
    return _Names({v: k for k, v in token_dict.items()}, dict(token_dict), ens_to_sym)


def _sort_genes(keys) -> list:
    return sorted(keys, key=lambda k: (1, k) if isinstance(k, tuple) else (0, (k,)))


# ---------------------------------------------------------------------------------------------
# the class
# ---------------------------------------------------------------------------------------------
class InSilicoPerturberStats:
    """Statistics of in silico perturbation results, with the reference's arguments and outputs.

    Parameters follow the reference: ``mode`` (one of :data:`STATS_MODES`), ``genes_perturbed``
    ("all" or a list of Ensembl IDs perturbed together), ``combos`` (0 or 1; 1 needs
    ``anchor_gene``), ``anchor_gene`` (Ensembl ID; ignored with cell states),
    ``cell_states_to_model``, ``pickle_suffix``, ``model_version`` ("V1" | "V2"),
    ``token_dictionary_file`` / ``gene_name_id_dictionary_file`` (override the version's files).
    """

    def __init__(
        self,
        mode: str = "mixture_model",
        genes_perturbed: str | list[str] = "all",
        combos: int = 0,
        anchor_gene: str | None = None,
        cell_states_to_model: dict | None = None,
        pickle_suffix: str = RAW_SUFFIX,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        gene_name_id_dictionary_file: str | os.PathLike | None = None,
    ) -> None:
        if mode not in STATS_MODES:
            raise ValueError(f"mode must be one of {STATS_MODES}, got {mode!r}.")
        if combos not in (0, 1):
            raise ValueError(f"combos must be 0 or 1, got {combos!r}.")
        if genes_perturbed != "all":
            if not isinstance(genes_perturbed, (list, tuple)) or not genes_perturbed:
                raise ValueError('genes_perturbed must be "all" or a non-empty list of Ensembl IDs.')
            genes_perturbed = list(genes_perturbed)
        if mode == "mixture_model" and genes_perturbed != "all":
            raise ValueError('mode "mixture_model" needs genes_perturbed="all".')
        if mode == "aggregate_data" and genes_perturbed == "all":
            raise ValueError('mode "aggregate_data" needs genes_perturbed as the list of genes perturbed together.')
        self.cell_states_to_model = check_cell_states(cell_states_to_model)
        if self.cell_states_to_model is not None and anchor_gene is not None:
            logger.warning("anchor_gene is ignored when cell_states_to_model is given.")
            anchor_gene = None
        if combos == 1 and anchor_gene is None:
            raise ValueError("combos=1 needs anchor_gene (the gene paired with every other gene).")
        if mode == "goal_state_shift" and self.cell_states_to_model is None:
            raise ValueError('mode "goal_state_shift" needs cell_states_to_model.')
        if mode == "mixture_model" and self.cell_states_to_model is not None:
            raise ValueError('mode "mixture_model" works on cosine similarities; with cell_states_to_model use '
                             '"goal_state_shift" or "vs_null".')
        self.mode = mode
        self.genes_perturbed = genes_perturbed
        self.combos = combos
        self.anchor_gene = anchor_gene
        self.pickle_suffix = pickle_suffix
        self.model_version = model_version
        self.token_dictionary_file = token_dictionary_file
        self.gene_name_id_dictionary_file = gene_name_id_dictionary_file
        self._names = _load_names(model_version, token_dictionary_file, gene_name_id_dictionary_file)
        self.anchor_token = self._tokens([anchor_gene])[0] if anchor_gene is not None else None
        self.tokens_perturbed = self._tokens(genes_perturbed) if genes_perturbed != "all" else "all"

    # ---- helpers -------------------------------------------------------------------------------
    def _tokens(self, genes: Sequence[str]) -> list[int]:
        tok = self._names.ensembl_to_token
        missing = [g for g in genes if g not in tok]
        if missing:
            raise KeyError(f"Gene(s) {missing} are not in the {self.model_version} token dictionary; "
                           "give Ensembl IDs of vocabulary genes.")
        return [int(tok[g]) for g in genes]

    @property
    def _states(self) -> list[str]:
        cs = self.cell_states_to_model
        return [cs["start_state"], cs["goal_state"], *cs["alt_states"]] if cs else []

    def _read(self, directory, kinds) -> RawShifts:
        states = self._states or None
        if states:
            kinds = set(kinds) | {"state"}
        n_files = [0]

        def dicts():
            for _, obj in iter_raw_dir(directory, self.pickle_suffix, kinds=kinds):
                n_files[0] += 1
                yield obj

        shifts = RawShifts.from_dicts(tqdm(dicts(), desc="Reading results", unit="file", disable=None),
                                      states=states, source=str(directory))
        if not n_files[0]:
            hint = (" With cell_states_to_model the results must be state-nested (perturber run with "
                    "cell_states_to_model)." if states else "")
            raise FileNotFoundError(f"No {'/'.join(sorted(kinds))}-level results ending in {self.pickle_suffix!r} "
                                    f"in {directory}.{hint}")
        return shifts

    def _gene_table(self, genes: list) -> pd.DataFrame:
        nm = self._names
        names, ids = [], []
        for g in genes:
            if isinstance(g, tuple):
                names.append(tuple(nm.symbol(t) for t in g))
                if self.genes_perturbed != "all":
                    ids.append(tuple(nm.ensembl(t) for t in g))
                else:  # the reference takes element [1] of tuple keys in "all" mode
                    ids.append(nm.ensembl(g[1]))
            else:
                names.append(nm.symbol(g))
                ids.append(nm.ensembl(g))
        return pd.DataFrame({"Gene": _obj(genes), "Gene_name": _obj(names), "Ensembl_ID": _obj(ids)})

    def _select_cell(self, shifts: RawShifts, state: str | None = None):
        """(perturbed code, value) of the cell-level rows (of one state)."""
        mask = shifts.affected < 0
        if state is not None:
            mask &= shifts.state == state
        codes = shifts.perturbed[mask]
        return codes, shifts.value[mask]

    def _per_gene(self, shifts: RawShifts, genes: list, state: str | None = None):
        """Gene index (into ``genes``) and value of each value measuring a gene's effect."""
        if self.anchor_token is not None and self.combos == 0:
            # gene mode: the effect of the anchor on each other gene, keys (anchor, gene)
            code = _code_of(shifts, self.anchor_token)
            mask = (shifts.affected >= 0) & (shifts.perturbed == code)
            tokens = np.asarray(genes, dtype=np.int64)
            affected, vals = shifts.affected[mask], shifts.value[mask]
            gidx = np.minimum(np.searchsorted(tokens, affected), max(len(tokens) - 1, 0))
            known = tokens[gidx] == affected if len(tokens) else np.zeros(affected.shape, bool)
            return gidx[known], vals[known]
        codes, vals = self._select_cell(shifts, state)
        lookup = np.full(len(shifts.keys), -1, dtype=np.int64)
        pos = {normalize_key(k): i for i, k in enumerate(genes)}
        for c, k in enumerate(shifts.keys):
            lookup[c] = pos.get(k, -1)
        gidx = lookup[codes]
        keep = gidx >= 0
        return gidx[keep], vals[keep]

    def _gene_list(self, shifts: RawShifts) -> list:
        if self.anchor_token is not None and self.combos == 0:
            code = _code_of(shifts, self.anchor_token)
            mask = (shifts.affected >= 0) & (shifts.perturbed == code)
            return [int(t) for t in np.unique(shifts.affected[mask])]
        present = np.unique(shifts.perturbed[shifts.affected < 0])
        return _sort_genes([shifts.keys[c] for c in present])

    # ---- entry point ---------------------------------------------------------------------------
    def get_stats(
        self,
        input_data_directory: str | os.PathLike,
        null_dist_data_directory: str | os.PathLike | None,
        output_directory: str | os.PathLike,
        output_prefix: str,
        null_dict_list: list[dict] | None = None,
    ) -> pd.DataFrame:
        """Compute the statistics of ``mode`` and write ``{output_directory}/{output_prefix}.csv``."""
        if not output_prefix or "/" in str(output_prefix):
            raise ValueError(f"output_prefix must be a plain file name stem, got {output_prefix!r}.")
        mode = self.mode
        if mode == "aggregate_gene_shifts":
            kinds = {"cell", "gene", "mixed"}
        elif self.cell_states_to_model is not None:
            kinds = {"state"}  # gene-level pickles of the same run are never state-nested: skip them
        elif self.anchor_token is not None and self.combos == 0:
            kinds = {"gene", "mixed"}
        else:
            kinds = {"cell", "mixed"}
        if mode == "mixture_model" and self.combos == 1:
            df = self._mixture_combos(input_data_directory, null_dist_data_directory, null_dict_list)
        else:
            shifts = self._read(input_data_directory, kinds)
            if mode == "goal_state_shift":
                df = self._goal_state_shift(shifts)
            elif mode == "vs_null":
                null = self._null(null_dist_data_directory, null_dict_list, kinds)
                df = self._vs_null(shifts, null)
            elif mode == "mixture_model":
                df = self._mixture(shifts)
            elif mode == "aggregate_data":
                df = self._aggregate_data(shifts)
            else:
                df = self._aggregate_gene_shifts(shifts)
        out = Path(output_directory)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{output_prefix}.csv"
        tmp = out / f".{output_prefix}.csv.tmp-{os.getpid()}"
        df.to_csv(tmp)
        os.replace(tmp, target)
        logger.info("Wrote %d rows to %s", len(df), target)
        return df

    def _null(self, directory, null_dict_list, kinds) -> RawShifts:
        if null_dict_list is not None:
            return RawShifts.from_dicts(list(null_dict_list), states=self._states or None, source="null_dict_list")
        if directory is None:
            raise ValueError(f'mode "{self.mode}" needs null_dist_data_directory or null_dict_list.')
        return self._read(directory, kinds)

    # ---- modes ---------------------------------------------------------------------------------
    def _goal_state_shift(self, shifts: RawShifts) -> pd.DataFrame:
        cs = self.cell_states_to_model
        goal, alts = cs["goal_state"], cs["alt_states"]
        if self.genes_perturbed != "all":
            code = _code_of(shifts, self._group_key())
            row = {}
            for col, st in [("Shift_to_goal_end", goal)] + [(f"Shift_to_alt_end_{a}", a) for a in alts]:
                sel = (shifts.perturbed == code) & (shifts.affected < 0) & (shifts.state == st)
                row[col] = float(np.mean(shifts.value[sel])) if sel.any() else np.nan
            return pd.DataFrame([row])
        genes = self._gene_list(shifts)
        n_g = len(genes)
        df = self._gene_table(genes)
        means, pvals, n_goal = {}, {}, None
        for st in [goal, *alts]:
            gidx, vals = self._per_gene(shifts, genes, st)
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
        return df.sort_values(["Sig", "Shift_to_goal_end", "Goal_end_FDR"], ascending=[False, False, True],
                              kind="stable")

    def _vs_null(self, shifts: RawShifts, null: RawShifts) -> pd.DataFrame:
        state = self.cell_states_to_model["goal_state"] if self.cell_states_to_model else None
        genes = self._gene_list(shifts)
        n_g = len(genes)
        df = self._gene_table(genes)
        tg, tv = self._per_gene(shifts, genes, state)
        ng, nv = self._per_gene(null, genes, state)
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

    def _mixture(self, shifts: RawShifts) -> pd.DataFrame:
        genes = self._gene_list(shifts)
        n_g = len(genes)
        df = self._gene_table(genes)
        gidx, vals = self._per_gene(shifts, genes)
        mean, n = _group_mean(gidx, vals, n_g)
        impact = _ImpactModel.fit(mean[n > 0])
        df["Test_avg_shift"] = mean
        df["Impact_component"] = impact(mean)
        df["Impact_component_percent"] = 100.0 * _group_mean(gidx, impact(vals).astype(np.float64), n_g)[0]
        df["N_Detections"] = n
        return df.sort_values(["Impact_component", "Test_avg_shift"], ascending=[False, True], kind="stable")

    def _mixture_combos(self, directory, null_directory, null_dict_list) -> pd.DataFrame:
        files = read_raw_dir(directory, self.pickle_suffix, kinds={"cell", "mixed"})
        dicts = [o for _, o in files]
        triples = _legacy_triples(dicts)
        if triples is not None:
            genes = _sort_genes(triples)
            vals = [np.asarray(triples[g], dtype=np.float64).reshape(-1, 3) for g in genes]
            gidx = np.repeat(np.arange(len(genes)), [v.shape[0] for v in vals])
            allv = np.concatenate(vals) if vals else np.zeros((0, 3))
            a_mean = _group_mean(gidx, allv[:, 0], len(genes))[0]
            t_mean = _group_mean(gidx, allv[:, 1], len(genes))[0]
            combo_vals = allv[:, 2]
        else:
            shifts = RawShifts.from_dicts(dicts, source=str(directory))
            genes = self._gene_list(shifts)
            gidx, combo_vals = self._per_gene(shifts, genes)
            if null_dict_list is None and null_directory is None:
                raise ValueError("combos=1 statistics need the single-gene results of the same cells as "
                                 "null_dist_data_directory (or null_dict_list) for the individual shifts.")
            single = self._null(null_directory, null_dict_list, {"cell", "mixed"})
            s_genes = self._gene_list(single)
            s_idx, s_vals = self._per_gene(single, s_genes)
            s_mean = _group_mean(s_idx, s_vals, len(s_genes))[0]
            lookup = dict(zip(s_genes, s_mean))
            if self.anchor_token not in lookup:
                raise KeyError(f"The single-gene results hold no cell-level value for the anchor {self.anchor_gene}.")
            a_mean = np.full(len(genes), lookup[self.anchor_token])
            t_mean = np.array([lookup.get(g, np.nan) for g in genes], dtype=np.float64)
        n_g = len(genes)
        df = self._gene_table(genes)
        c_mean, n = _group_mean(gidx, combo_vals, n_g)
        impact = _ImpactModel.fit(c_mean[n > 0])
        sum_indiv = 1 - ((1 - a_mean) + (1 - t_mean))
        df["Anchor_shift"] = a_mean
        df["Test_token_shift"] = t_mean
        df["Sum_of_indiv_shifts"] = sum_indiv
        df["Combo_shift"] = c_mean
        df["Combo_minus_sum_shift"] = c_mean - sum_indiv
        df["Impact_component"] = impact(c_mean)
        df["Impact_component_percent"] = 100.0 * _group_mean(gidx, impact(combo_vals).astype(np.float64), n_g)[0]
        df["N_Detections"] = n
        return df.sort_values(["Combo_minus_sum_shift"], ascending=[True], kind="stable")

    def _group_key(self):
        toks = self.tokens_perturbed
        return toks[0] if len(toks) == 1 else tuple(toks)

    def _aggregate_data(self, shifts: RawShifts) -> pd.DataFrame:
        key = self._group_key()
        code = _code_of(shifts, key)
        sel = (shifts.perturbed == code) & (shifts.affected < 0)
        name = self._gene_table([shifts.keys[code]])["Gene_name"].iloc[0]
        names = np.empty(int(sel.sum()), dtype=object)
        names[:] = [name] * names.size
        df = pd.DataFrame({"Cosine_sim": shifts.value[sel], "Gene": names})
        if shifts.state is not None:
            df["State"] = shifts.state[sel]
        return df

    def _aggregate_gene_shifts(self, shifts: RawShifts) -> pd.DataFrame:
        if self.anchor_token is not None:
            keep = shifts.perturbed == _code_of(shifts, self.anchor_token)
        else:
            keep = np.ones(len(shifts), dtype=bool)
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
        table = self._gene_table(genes)
        perturbed = shifts.key_array()[g_p]
        if not any(isinstance(k, tuple) for k in genes):
            perturbed = perturbed.astype(np.int64)
        # affected names through the distinct tokens only
        u_tok, u_inv = np.unique(g_a, return_inverse=True)
        nm = self._names
        u_aff = _obj(["cell_emb" if t < 0 else int(t) for t in u_tok])
        u_name = _obj([np.nan if t < 0 else nm.symbol(t) for t in u_tok])
        u_ens = _obj([np.nan if t < 0 else nm.ensembl(t) for t in u_tok])
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


# ---------------------------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------------------------
def _obj(items) -> np.ndarray:
    return np.fromiter(items, dtype=object, count=len(items))


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


def _legacy_triples(dicts: list[dict]) -> dict | None:
    """Merged {gene: [(anchor, token, combo), ...]} if the values are legacy triples, else None."""
    for d in dicts:
        for v in d.values():
            if v:
                if not isinstance(v[0], (tuple, list, np.ndarray)):
                    return None
                break
        else:
            continue
        break
    else:
        return None
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(k, tuple) and len(k) == 2 and k[1] == "cell_emb":
                out.setdefault(normalize_key(k[0]), []).extend(v)
    return out


class _ImpactModel:
    """Two-component Gaussian mixture on per-gene means; 1 = impact (lower-mean) component."""

    def __init__(self, gm) -> None:
        self.gm = gm
        means = gm.means_.ravel()
        self.low_comp = int(np.argmin(means))
        self.low, self.high = float(means.min()), float(means.max())

    @classmethod
    def fit(cls, means: np.ndarray) -> "_ImpactModel":
        from sklearn.mixture import GaussianMixture

        means = np.asarray(means, dtype=np.float64)
        if means.size < 2:
            raise ValueError(f"The mixture model needs at least 2 perturbed genes with values, got {means.size}.")
        return cls(GaussianMixture(n_components=2, random_state=0).fit(means.reshape(-1, 1)))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        out = np.zeros(v.shape, dtype=np.int64)
        below, above = v < self.low, v > self.high
        mid = ~below & ~above & ~np.isnan(v)
        out[below] = 1
        if mid.any():
            out[mid] = (self.gm.predict(v[mid].reshape(-1, 1)) == self.low_comp).astype(np.int64)
        return out


def load_null_dicts(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Load raw pickles to pass as ``null_dict_list``."""
    return [load_raw(p) for p in paths]
