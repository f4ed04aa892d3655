"""Statistics over in silico perturbation results: the checked description (:func:`stats_spec`),
reading a result folder, and the entry functions (:func:`compute_stats`, :func:`perturbation_stats`).

Reads the perturber's ``*_raw.pickle`` files (see ``_results``) into flat arrays and computes every
statistic with numpy / pandas group-bys, so the cost is linear in the number of stored values (the
reference scanned every key once per gene).

Modes (output ``{output_dir}/{output_prefix}.csv``, written with its index):

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
  ``null_dicts`` (anchor shift from ``(anchor, "cell_emb")``, gene shift from
  ``(gene, "cell_emb")``). Legacy ``(anchor, token, combo)`` value triples are still accepted.
  (The reference expected triples that the perturber never writes, a dead path.)
- With ``cell_states_to_model``, gene-level pickles in the same folder are skipped instead of
  crashing the state-indexed merge; files are classified by content, not by suffix.
- ``aggregate_data`` works for multi-gene lists (the reference failed with "Length of values (3)
  does not match length of index (20)"): ``Gene`` holds the group's symbols for every value.
- Tokens are Python ints, so tuple keys print as ``(17276, 1876, 9969)`` rather than
  ``(np.int16(17276), ...)``; genes missing from the vocabulary raise ``KeyError`` instead of
  becoming ``None``; explicit dictionary files win over the version (which only picks the
  defaults); errors are ``ValueError`` / ``KeyError`` / ``FileNotFoundError`` with messages.
- Files are merged in file-name order (the reference used ``os.listdir`` order, which only
  changes the order of concatenated lists: the 100,000-value null subsample and equal-value ties).
  ``aggregate_gene_shifts`` numbers its rows gene-level keys first, as the reference's output.
- ``vs_null`` with cell states compares the goal-state shifts; ``aggregate_gene_shifts`` with
  states adds a ``State`` column to the cell-level rows. ``mixture_model`` with states is refused
  (its impact rule assumes cosine similarities).
- The CSV is written atomically and the output folder is created; the table is also returned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .._constants import STATS_MODES, StatsMode
from .._utils import OptionError, check_cell_states, check_choice, doc_params, progress_bar, write_csv
from .._utils._docs import doc_cell_states, doc_progress
from . import _stats_modes as M
from ._results import (
    RAW_SUFFIX,
    RawShifts,
    _looks_gene_level,
    iter_raw_dir,
    list_raw_files,
    load_raw,
    raw_kind,
    read_raw_dir,
)
from ._vocab_meta import check_results_vocab

logger = logging.getLogger(__name__)

__all__ = ["StatsSpec", "compute_stats", "load_null_dicts", "perturbation_stats", "read_shifts", "stats_spec"]


@dataclass(frozen=True, eq=False)
class StatsSpec:
    """A checked statistics request (see :func:`stats_spec`)."""

    mode: StatsMode
    genes: str | tuple
    tokens: tuple[int, ...] | None
    combos: int
    anchor_gene: str | None
    anchor_token: int | None
    states: dict | None
    pickle_suffix: str
    names: M.GeneNames

    @property
    def state_list(self) -> list:
        cs = self.states
        return [cs["start_state"], cs["goal_state"], *cs["alt_states"]] if cs else []

    @property
    def gene_mode_anchor(self) -> int | None:
        """The anchor when its effect on each other gene is wanted (an anchor without combos)."""
        return self.anchor_token if self.combos == 0 else None

    @property
    def kinds(self) -> set[str]:
        """Which raw files the mode reads (see ``_results.raw_kind``)."""
        if self.mode == "aggregate_gene_shifts":
            return {"cell", "gene", "mixed"}
        if self.states is not None:
            return {"state"}  # gene-level pickles of the same run are never state-nested: skip them
        if self.gene_mode_anchor is not None:
            return {"gene", "mixed"}
        return {"cell", "mixed"}


@doc_params(cell_states=doc_cell_states)
def stats_spec(
    mode: StatsMode = "mixture_model",
    genes: str | Sequence[str] = "all",
    *,
    combos: int = 0,
    anchor_gene: str | None = None,
    cell_states_to_model: Mapping[str, Any] | None = None,
    pickle_suffix: str = RAW_SUFFIX,
    vocab: Any = "V2",
    token_dictionary_file: str | os.PathLike | None = None,
    gene_name_id_file: str | os.PathLike | None = None,
) -> StatsSpec:
    """Check a statistics request and resolve its genes.

    Args:
        mode: one of ``STATS_MODES`` (see the module docstring).
        genes: "all" or the Ensembl IDs perturbed together.
        combos: 0, or 1 for anchor + gene pair results (needs ``anchor_gene``).
        anchor_gene: Ensembl ID of the anchor (ignored with cell states).
        {cell_states}
        pickle_suffix: the suffix of the result files.
        vocab, token_dictionary_file, gene_name_id_file: the gene names (see ``gene_names``).
    """
    check_choice("mode", mode, STATS_MODES)
    check_choice("combos", combos, (0, 1))
    if genes != "all":
        if not isinstance(genes, (list, tuple)) or not genes:
            raise OptionError('genes_perturbed must be "all" or a non-empty list of Ensembl IDs.')
        genes = tuple(genes)
    if mode == "mixture_model" and genes != "all":
        raise OptionError('mode "mixture_model" needs genes_perturbed="all".')
    if mode == "aggregate_data" and genes == "all":
        raise OptionError('mode "aggregate_data" needs genes_perturbed as the list of genes perturbed together.')
    states = check_cell_states(cell_states_to_model)
    if states is not None and anchor_gene is not None:
        logger.warning("anchor_gene is ignored when cell_states_to_model is given.")
        anchor_gene = None
    if combos == 1 and anchor_gene is None:
        raise OptionError("combos=1 needs anchor_gene (the gene paired with every other gene).")
    if mode == "goal_state_shift" and states is None:
        raise OptionError('mode "goal_state_shift" needs cell_states_to_model.')
    if mode == "mixture_model" and states is not None:
        raise OptionError('mode "mixture_model" works on cosine similarities; with cell_states_to_model use '
                          '"goal_state_shift" or "vs_null".')
    names = M.gene_names(vocab, token_dictionary_file, gene_name_id_file)
    return StatsSpec(
        mode=mode, genes=genes, tokens=tuple(names.tokens(genes)) if genes != "all" else None, combos=int(combos),
        anchor_gene=anchor_gene, anchor_token=names.tokens([anchor_gene])[0] if anchor_gene is not None else None,
        states=states, pickle_suffix=pickle_suffix, names=names,
    )


@doc_params(progress=doc_progress)
def read_shifts(directory: str | os.PathLike, kinds: set[str], states: Sequence[Any] | None = None,
                suffix: str = RAW_SUFFIX, *, progress: bool | None = None) -> RawShifts:
    """The values of a folder's raw files of the given kinds (state-nested ones: of ``states``).

    Args:
        {progress}
    """
    if states:
        kinds = set(kinds) | {"state"}
    n_files = 0

    def dicts():
        nonlocal n_files
        for _, obj in iter_raw_dir(directory, suffix, kinds=kinds):
            n_files += 1
            yield obj

    bar = progress_bar(dicts(), desc="Reading results", unit="file", progress=progress)
    shifts = RawShifts.from_dicts(bar, states=list(states) if states else None, source=str(directory))
    if not n_files:
        hint = (" With cell_states_to_model the results must be state-nested (perturber run with "
                "cell_states_to_model)." if states else _goal_state_hint(directory, suffix))
        raise FileNotFoundError(f"No {'/'.join(sorted(kinds))}-level results ending in {suffix!r} "
                                f"in {directory}.{hint}")
    return shifts


GOAL_STATE_MODES = ("goal_state_shift", "vs_null", "aggregate_gene_shifts")


def _goal_state_hint(directory: str | os.PathLike, suffix: str) -> str:
    """A sentence naming the states when the folder holds a goal-state run's (state-nested) results."""
    for path in list_raw_files(directory, suffix):
        if _looks_gene_level(path.name):  # gene-level pickles are never state-nested (and the largest)
            continue
        obj = load_raw(path)
        if raw_kind(obj) == "state":
            return (f" It holds a goal-state run's results ({path.name}: shifts towards the states "
                    f"{', '.join(map(str, obj))}), not cosine similarities. Modes that fit a goal-state "
                    f"run: {', '.join(GOAL_STATE_MODES)}, given the run's cell states (CLI: --state-key, "
                    "--start-state, --goal-state; Python: cell_states_to_model).")
    return ""


def load_null_dicts(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Load raw pickles to pass as ``null_dicts``."""
    return [load_raw(p) for p in paths]


def _null(spec: StatsSpec, directory: Any, null_dicts: Sequence[dict] | None, kinds: set[str],
          progress: bool | None) -> RawShifts | None:
    if null_dicts is not None:
        return RawShifts.from_dicts(list(null_dicts), states=spec.state_list or None, source="null_dict_list")
    if directory is None:
        return None
    return read_shifts(directory, kinds, spec.state_list, spec.pickle_suffix, progress=progress)


def _check_vocab(spec: StatsSpec, directory: Any, shifts: RawShifts) -> None:
    """Refuse to name the genes of results made with another vocabulary (see ``_vocab_meta``)."""
    names = spec.names
    check_results_vocab(directory, shifts.keys, shifts.affected, names.version or "custom",
                        max(names.token_to_ensembl, default=-1) + 1)


@doc_params(progress=doc_progress)
def compute_stats(
    spec: StatsSpec,
    input_dir: str | os.PathLike,
    null_dir: str | os.PathLike | None = None,
    null_dicts: Sequence[dict] | None = None,
    *,
    progress: bool | None = None,
) -> pd.DataFrame:
    """The statistics table of ``spec.mode`` over the results in ``input_dir``.

    Args:
        null_dir, null_dicts: the null distribution (``vs_null``) or the single-gene results
            (``mixture_model`` with combos): a result folder, or already loaded raw dictionaries.
        {progress}
    """
    names, mode, anchor = spec.names, spec.mode, spec.gene_mode_anchor
    group = spec.tokens is not None
    if mode == "mixture_model" and spec.combos == 1:
        dicts = [o for _, o in read_raw_dir(input_dir, spec.pickle_suffix, kinds={"cell", "mixed"})]
        triples = M.legacy_triples(dicts)
        if triples is not None:
            return M.mixture_model_combos(triples, names, spec.anchor_token)
        pairs = RawShifts.from_dicts(dicts, source=str(input_dir))
        _check_vocab(spec, input_dir, pairs)
        single = _null(spec, null_dir, null_dicts, {"cell", "mixed"}, progress)
        return M.mixture_model_combos(pairs, names, spec.anchor_token, single)
    shifts = read_shifts(input_dir, spec.kinds, spec.state_list, spec.pickle_suffix, progress=progress)
    _check_vocab(spec, input_dir, shifts)
    if mode == "goal_state_shift":
        return M.goal_state_shift(shifts, names, spec.states, spec.tokens)
    if mode == "vs_null":
        null = _null(spec, null_dir, null_dicts, spec.kinds, progress)
        if null is None:
            raise ValueError(f'mode "{mode}" needs null_dist_data_directory or null_dict_list.')
        goal = spec.states["goal_state"] if spec.states else None
        return M.vs_null(shifts, null, names, goal_state=goal, anchor=anchor, group=group)
    if mode == "mixture_model":
        return M.mixture_model(shifts, names, anchor=anchor)
    if mode == "aggregate_data":
        return M.aggregate_data(shifts, names, spec.tokens)
    return M.aggregate_gene_shifts(shifts, names, anchor_token=spec.anchor_token, group=group)


def perturbation_stats(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    output_prefix: str,
    spec: StatsSpec,
    *,
    null_dir: str | os.PathLike | None = None,
    null_dicts: Sequence[dict] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """:func:`compute_stats`, written atomically to ``{output_dir}/{output_prefix}.csv``; returns the table."""
    if not output_prefix or "/" in str(output_prefix):
        raise OptionError(f"output_prefix must be a plain file name stem, got {output_prefix!r}.")
    df = compute_stats(spec, input_dir, null_dir, null_dicts, progress=progress)
    target = write_csv(Path(output_dir) / f"{output_prefix}.csv", df)
    logger.info("Wrote %d rows to %s", len(df), target)
    return df
