"""New vocabularies from gene medians: token ids in the published layout, written as JSON and pickles."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import CLS, EOS, MASK, PAD, VOCAB_FORMATS, VocabFormat
from .._utils import atomic_folder, check_choice, refuse_existing, write_csv, write_pickle
from ._digests import GeneDigests
from ._vocab import VOCAB_JSON_FILES, GeneVocab

logger = logging.getLogger(__name__)


def build_vocab(
    medians: "Mapping[str, float] | GeneDigests",
    *,
    counts: Mapping[str, int] | None = None,
    special_tokens: bool = True,
    min_cells: int = 0,
    genes: Iterable[str] | None = None,
    gene_name_id: Mapping[str, str] | None = None,
) -> GeneVocab:
    """A vocabulary from gene medians: ``<pad>``=0, ``<mask>``=1, (``<cls>``=2, ``<eos>``=3), then genes sorted.

    Genes with a missing, zero or non-finite median are left out, as are genes detected in fewer
    than ``min_cells`` cells (needs ``counts``, given directly or by passing a :class:`GeneDigests`).
    ``genes`` restricts the vocabulary to a gene list. The median dictionary keeps every valid
    median; the Ensembl mapping is the identity over the vocabulary genes.
    """
    if isinstance(medians, GeneDigests):
        counts = medians.counts() if counts is None else counts
        gene_name_id = medians.gene_symbols if gene_name_id is None else gene_name_id
        medians = medians.medians()
    valid = {str(g): float(v) for g, v in medians.items() if v is not None and math.isfinite(v) and v > 0}
    dropped = len(medians) - len(valid)
    if dropped:
        logger.info("%d gene(s) have a zero or missing median and are left out.", dropped)
    candidates = set(valid)
    if genes is not None:
        wanted = {str(g) for g in genes}
        missing = sorted(wanted - candidates)
        if missing:
            logger.warning("%d requested gene(s) have no median and are left out (e.g. %s).",
                           len(missing), missing[:5])
        candidates &= wanted
    if min_cells > 0:
        if counts is None:
            raise ValueError("min_cells needs detection counts: pass counts= or a GeneDigests.")
        candidates = {g for g in candidates if counts.get(g, 0) >= min_cells}
    if not candidates:
        raise ValueError("No gene is left for the vocabulary (check min_cells, genes and the inputs).")
    specials = [PAD, MASK] + ([CLS, EOS] if special_tokens else [])
    clash = candidates & set(specials)
    if clash:
        raise ValueError(f"Gene ids clash with special tokens: {sorted(clash)}.")
    token_dict = {t: i for i, t in enumerate(specials)}
    for i, g in enumerate(sorted(candidates), start=len(specials)):
        token_dict[g] = i
    name_id = {str(s): str(g) for s, g in (gene_name_id or {}).items() if g in valid}
    mapping = {g.upper(): g for g in sorted(candidates)}
    return GeneVocab(token_dict, valid, name_id, mapping, version=None)


_PICKLE_STEMS = ("token_dictionary", "gene_median_dictionary", "gene_name_id_dict", "ensembl_mapping_dict")


def vocab_file_paths(folder: str | os.PathLike, name: str = "custom",
                     formats: Sequence[VocabFormat] = ("json", "pickle"), counts: bool = True) -> list[Path]:
    """The files :func:`write_vocab` writes into ``folder`` (to refuse existing ones before any work)."""
    folder = Path(folder)
    names = list(VOCAB_JSON_FILES) if "json" in formats else []
    names += [f"{stem}_{name}.pkl" for stem in _PICKLE_STEMS] if "pickle" in formats else []
    names += [f"gene_stats_{name}.tsv"] if counts else []
    return [folder / n for n in names]


def write_vocab(vocab: GeneVocab, folder: str | os.PathLike, name: str = "custom", *,
                counts: Mapping[str, int] | None = None, formats: Sequence[VocabFormat] = ("json", "pickle"),
                overwrite: bool = False) -> Path:
    """Write a vocabulary as JSON (:meth:`GeneVocab.save`) and/or as published-style pickles.

    The pickles are ``token_dictionary_<name>.pkl``, ``gene_median_dictionary_<name>.pkl``,
    ``gene_name_id_dict_<name>.pkl`` and ``ensembl_mapping_dict_<name>.pkl``, usable wherever the
    reference package takes dictionary files. With ``counts``, ``gene_stats_<name>.tsv`` lists each
    gene's median, detection count and whether it is in the vocabulary. Files of an earlier
    vocabulary in ``folder`` are refused unless ``overwrite``; the files are written in a temporary
    folder and moved in together when all are complete.
    """
    for f in formats:
        check_choice("formats", f, VOCAB_FORMATS)
    folder = Path(folder)
    refuse_existing(vocab_file_paths(folder, name, formats, counts is not None), overwrite)
    with atomic_folder(folder, merge=True) as tmp:
        _write_vocab_files(vocab, tmp, name, counts, formats)
    return folder


def _write_vocab_files(vocab: GeneVocab, folder: Path, name: str, counts: Mapping[str, int] | None,
                       formats: Sequence[VocabFormat]) -> None:
    if "json" in formats:
        vocab.save(folder, format="json")
    if "pickle" in formats:
        for stem, obj in zip(_PICKLE_STEMS, (vocab.token_dict, vocab.gene_medians, vocab.gene_name_id,
                                             vocab.ensembl_mapping)):
            write_pickle(folder / f"{stem}_{name}.pkl", dict(obj))
    if counts is not None:
        genes = sorted(set(vocab.gene_medians) | set(counts))
        table = pd.DataFrame({
            "gene": genes,
            "median": [vocab.gene_medians.get(g, np.nan) for g in genes],
            "n_cells_detected": [int(counts.get(g, 0)) for g in genes],
            "in_vocab": [g in vocab.token_dict for g in genes],
        })
        write_csv(folder / f"gene_stats_{name}.tsv", table, sep="\t", index=False)
