"""Gene vocabularies: token ids, gene medians, symbol and Ensembl maps, and where to find them.

The published dictionaries are looked up in this order: an explicit path, ``settings.dicts_dir``
(default: the folder named by ``GENEFORMER_DICTS_DIR``), the local cache (``settings.cache_dir``:
``GENEFORMER_CACHE`` or ``~/.cache/geneformer``), and finally the Hugging Face hub repository
``ctheodoris/Geneformer``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .._constants import CLS, EOS, HUB_REPO, MASK, PAD, SPECIAL_TOKENS, VERSIONS, VOCAB_FORMATS, VocabFormat
from .._settings import settings
from .._utils import (
    VocabularyError,
    atomic_path,
    check_choice,
    check_model_version,
    hub_offline_reason,
    load_plain_file,
    refuse_existing,
    write_bytes,
    write_json,
    write_pickle,
)

logger = logging.getLogger(__name__)


#: File names of the published dictionaries, per vocabulary version.
DICT_FILES: dict[str, dict[str, str]] = {
    "V2": {
        "token_dictionary": "token_dictionary_gc104M.pkl",
        "gene_median": "gene_median_dictionary_gc104M.pkl",
        "gene_name_id": "gene_name_id_dict_gc104M.pkl",
        "ensembl_mapping": "ensembl_mapping_dict_gc104M.pkl",
    },
    "V1": {
        "token_dictionary": "token_dictionary_gc30M.pkl",
        "gene_median": "gene_median_dictionary_gc30M.pkl",
        "gene_name_id": "gene_name_id_dict_gc30M.pkl",
        "ensembl_mapping": "ensembl_mapping_dict_gc30M.pkl",
    },
}
#: Where each version's files live inside the hub repository.
HUB_SUBFOLDERS = {"V2": "geneformer", "V1": "geneformer/gene_dictionaries_30m"}

# Names of the JSON files written by GeneVocab.save (the safe, non-pickle form).
_JSON_NAMES = {
    "token_dictionary": "token_dictionary.json",
    "gene_median": "gene_median_dictionary.json",
    "gene_name_id": "gene_name_id_dict.json",
    "ensembl_mapping": "ensembl_mapping_dict.json",
}
#: Every file :meth:`GeneVocab.save` writes as JSON.
VOCAB_JSON_FILES = (*_JSON_NAMES.values(), "vocab.json")


def _candidates(folder: Path, version: str, name: str) -> list[Path]:
    sub = HUB_SUBFOLDERS[version]
    return [
        folder / name,
        folder / version / name,
        folder / version.lower() / name,
        folder / sub / name,
        folder / "gene_dictionaries_30m" / name,
    ]


def resolve_dict_file(kind: str, version: str = "V2", path: str | os.PathLike | None = None) -> Path:
    """Find one published dictionary file: explicit path, ``settings.dicts_dir``, cache, then the hub
    (in a folder, ``NAME.json`` from ``geneformer convert-dict`` is preferred to the pickle ``NAME.pkl``)."""
    version = check_model_version(version)
    if kind not in DICT_FILES[version]:
        raise ValueError(f"Unknown dictionary kind {kind!r}; expected one of {list(DICT_FILES[version])}.")
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise VocabularyError(f"Dictionary file {p} does not exist.")
        return p
    name = DICT_FILES[version][kind]
    searched: list[str] = []
    for label, folder in (("GENEFORMER_DICTS_DIR", settings.dicts_dir), ("the cache", settings.cache_dir / "dicts")):
        if not folder:
            searched.append(f"{label} (unset)")
            continue
        for cand in _candidates(Path(folder).expanduser(), version, name):
            for c in (cand.with_suffix(".json"), cand):  # a converted dictionary (convert-dict) is never unpickled
                if c.is_file():
                    return c
        searched.append(f"{label} {folder}")
    offline = hub_offline_reason()
    try:
        return _download_from_hub(version, name, local_only=bool(offline))
    except Exception as exc:  # network errors, offline mode, missing package
        why = offline or (str(exc).splitlines() or [type(exc).__name__])[0]
        hub = f"the hub {HUB_REPO} ({why})"
        raise VocabularyError(
            f"No {version} {kind} dictionary {name!r}: looked in {', '.join(searched)} and {hub}. " + LOCAL_DICTS_HINT
        ) from exc


#: How to point at local dictionaries, in every front end's spelling (the end of the not-found message).
LOCAL_DICTS_HINT = ("Point at local ones: set GENEFORMER_DICTS_DIR to a folder holding the published .pkl "
                    "dictionaries (Python: geneformer.settings.dicts_dir), or give a vocabulary folder "
                    "(vocab=FOLDER in Python, --vocab FOLDER for tokenize/embed/pretrain).")


def _download_from_hub(version: str, name: str, local_only: bool = False) -> Path:
    import shutil

    from huggingface_hub import hf_hub_download

    remote = hf_hub_download(repo_id=HUB_REPO, filename=f"{HUB_SUBFOLDERS[version]}/{name}",
                             local_files_only=local_only)
    target = settings.cache_dir / "dicts" / version / name
    with atomic_path(target) as tmp:
        shutil.copyfile(remote, tmp)
    logger.info("Downloaded %s from %s to %s", name, HUB_REPO, target)
    return target


def load_dict_file(path: str | os.PathLike) -> dict:
    """Load a dictionary from a published pickle or from JSON, by extension."""
    p = Path(path)
    if p.suffix == ".json":
        try:
            obj = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VocabularyError(f"Could not read dictionary file {p}: {exc}") from exc
    else:
        obj = load_plain_file(p, "dictionary file", error=VocabularyError)
    if not isinstance(obj, dict):
        raise VocabularyError(f"{p} holds a {type(obj).__name__}, expected a dictionary.")
    return obj


def convert_dict_file(path: str | os.PathLike, output: str | os.PathLike | None = None, *,
                      overwrite: bool = False) -> Path:
    """Convert a dictionary pickle (a published gene dictionary, an id-class dictionary) to JSON once,
    so that it is never unpickled again; returns the JSON path (default: beside it, ``.json``).

    The pickle is read with the restricted loader; keys must be strings or integers (JSON writes both
    as strings, which every reader of these files accepts), values plain data (numpy numbers become
    numbers). An existing output is refused unless ``overwrite``.
    """
    import numbers

    src = Path(path)
    dst = Path(output) if output is not None else src.with_suffix(".json")
    if dst.resolve() == src.resolve():
        raise VocabularyError(f"The JSON output {dst} would replace the input; choose another --output.")
    obj = load_dict_file(src)
    bad = [k for k in obj if not isinstance(k, (str, numbers.Integral))]
    if bad:
        raise VocabularyError(f"{src} has keys JSON cannot hold (e.g. {bad[0]!r} of type {type(bad[0]).__name__}).")
    refuse_existing(dst, overwrite)
    write_json(dst, {str(k) if not isinstance(k, str) else k: v for k, v in obj.items()}, indent=None)
    return dst


def _warn_mouse_style(symbols: list[str]) -> None:
    """Warn when most symbols are written like mouse genes (``Cd3e``): the vocabularies are human and
    symbols match case-insensitively, so mouse data would be read as the human orthologues' names."""
    named = [s for s in symbols if s and s.lower() != s.upper()]
    if len(named) < 10:  # a few genes typed by hand say nothing about the data's species
        return
    mixed = sum(1 for s in named if s != s.upper() and "orf" not in s)  # C1orf112 is human
    if mixed > 0.5 * len(named):
        example = next(s for s in named if s != s.upper() and "orf" not in s)
        logger.warning(
            "%d of %d gene symbols are not upper case (e.g. %r), as mouse symbols are; the vocabulary is human "
            "and symbols are matched case-insensitively, so mouse genes become the human genes of the same "
            "name. Map mouse data to human Ensembl IDs first.", mixed, len(named), example)


@dataclass
class GeneVocab:
    """A gene vocabulary: token ids, non-zero gene medians, symbol→Ensembl and Ensembl mapping.

    ``token_dict`` maps special tokens and Ensembl IDs to integer ids; ``gene_medians`` maps Ensembl
    IDs to the non-zero median of ``count / n_counts * 10,000`` over the pretraining corpus;
    ``gene_name_id`` maps gene symbols to Ensembl IDs; ``ensembl_mapping`` maps upper-case symbols
    and Ensembl IDs to the canonical Ensembl ID used to collapse duplicates.
    """

    token_dict: dict[str, int]
    gene_medians: dict[str, float]
    gene_name_id: dict[str, str] = field(default_factory=dict)
    ensembl_mapping: dict[str, str] = field(default_factory=dict)
    version: str | None = None

    def __post_init__(self) -> None:
        # numpy int16 values (V1) become plain ints so that every consumer sees one type
        self.token_dict = {str(k): int(v) for k, v in self.token_dict.items()}
        self.gene_medians = {str(k): float(v) for k, v in self.gene_medians.items()}
        missing = [g for g in self.genes if g not in self.gene_medians]
        if missing:
            raise VocabularyError(
                f"{len(missing)} vocabulary genes have no median (e.g. {missing[:3]}); "
                "the token and median dictionaries do not belong together."
            )

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        version: str = "V2",
        *,
        token_dictionary_file: str | os.PathLike | None = None,
        gene_median_file: str | os.PathLike | None = None,
        gene_name_id_file: str | os.PathLike | None = None,
        gene_mapping_file: str | os.PathLike | None = None,
    ) -> "GeneVocab":
        """Load a published vocabulary (or user files overriding any of its parts)."""
        version = check_model_version(version)
        token_dict = load_dict_file(resolve_dict_file("token_dictionary", version, token_dictionary_file))
        medians = load_dict_file(resolve_dict_file("gene_median", version, gene_median_file))
        try:
            name_id = load_dict_file(resolve_dict_file("gene_name_id", version, gene_name_id_file))
        except VocabularyError as exc:
            if gene_name_id_file is not None:  # a file the user named must be readable
                raise
            logger.warning("No gene symbol dictionary (%s); symbols cannot be mapped.", exc)
            name_id = {}
        try:
            mapping = load_dict_file(resolve_dict_file("ensembl_mapping", version, gene_mapping_file))
        except VocabularyError as exc:
            if gene_mapping_file is not None:
                raise
            logger.warning("No Ensembl mapping dictionary (%s); using an identity mapping.", exc)
            mapping = {}
        custom = any(f is not None for f in (token_dictionary_file, gene_median_file))
        return cls(token_dict, medians, name_id, mapping, version=None if custom else version)

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> "GeneVocab":
        """Load a vocabulary saved with :meth:`save` (JSON) or a folder of published pickles."""
        folder = Path(folder)
        if not folder.is_dir():
            raise VocabularyError(f"Vocabulary folder {folder} does not exist.")
        meta_path = folder / "vocab.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        parts: dict[str, dict] = {}
        for kind, json_name in _JSON_NAMES.items():
            cands = [folder / json_name] + sorted(folder.glob(json_name.replace(".json", "*.pkl")))
            cands += sorted(folder.glob(f"{kind}*.pkl"))
            found = next((c for c in cands if c.is_file()), None)
            if found is None and kind in ("token_dictionary", "gene_median"):
                raise VocabularyError(f"{folder} has no {json_name} (nor a {kind} pickle).")
            parts[kind] = load_dict_file(found) if found else {}
        return cls(
            parts["token_dictionary"], parts["gene_median"], parts["gene_name_id"],
            parts["ensembl_mapping"], version=meta.get("version"),
        )

    def save(self, folder: str | os.PathLike, format: VocabFormat = "json") -> Path:
        """Write the vocabulary to ``folder`` as JSON (safe) or as published-style pickles."""
        check_choice("format", format, VOCAB_FORMATS)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        parts = {
            "token_dictionary": self.token_dict,
            "gene_median": self.gene_medians,
            "gene_name_id": self.gene_name_id,
            "ensembl_mapping": self.ensembl_mapping,
        }
        for kind, obj in parts.items():
            if format == "json":
                write_bytes(folder / _JSON_NAMES[kind], json.dumps(obj).encode())
            else:
                write_pickle(folder / _JSON_NAMES[kind].replace(".json", ".pkl"), obj)
        meta = {"version": self.version, "size": len(self), "special_tokens": self.special_tokens}
        write_bytes(folder / "vocab.json", json.dumps(meta, indent=1).encode())
        return folder

    # ---- properties ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_dict)

    @property
    def size(self) -> int:
        """Number of tokens, special tokens included (the model's ``vocab_size``)."""
        return len(self.token_dict)

    @property
    def special_tokens(self) -> list[str]:
        return [t for t in SPECIAL_TOKENS if t in self.token_dict]

    @property
    def has_cls_eos(self) -> bool:
        return CLS in self.token_dict and EOS in self.token_dict

    @property
    def pad_id(self) -> int:
        return self.token_dict[PAD]

    @property
    def mask_id(self) -> int:
        return self.token_dict[MASK]

    @property
    def cls_id(self) -> int | None:
        return self.token_dict.get(CLS)

    @property
    def eos_id(self) -> int | None:
        return self.token_dict.get(EOS)

    @cached_property
    def genes(self) -> list[str]:
        """Ensembl IDs of the vocabulary genes, in token-dictionary order (special tokens excluded)."""
        return [g for g in self.token_dict if g not in SPECIAL_TOKENS]

    @cached_property
    def gene_token_ids(self) -> np.ndarray:
        return np.array([self.token_dict[g] for g in self.genes], dtype=np.int64)

    @cached_property
    def gene_median_array(self) -> np.ndarray:
        return np.array([self.gene_medians[g] for g in self.genes], dtype=np.float64)

    @cached_property
    def gene_index(self) -> dict[str, int]:
        """Ensembl ID → position in :attr:`genes`."""
        return {g: i for i, g in enumerate(self.genes)}

    @cached_property
    def id_to_token(self) -> dict[int, str]:
        return {v: k for k, v in self.token_dict.items()}

    @cached_property
    def ensembl_to_symbol(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for sym, ens in self.gene_name_id.items():
            out.setdefault(ens, sym)
        return out

    @property
    def token_dtype(self) -> str:
        """Arrow integer type for ``input_ids``: int16 when every id fits (as the reference's V1), else int32."""
        return "int16" if self.version == "V1" and max(self.token_dict.values()) < 2**15 else "int32"

    # ---- lookups ------------------------------------------------------------------------------
    def canonical_ids(self, ids: Iterable[str], collapse: bool = True) -> np.ndarray:
        """Map gene IDs to canonical vocabulary Ensembl IDs (``""`` when not in the vocabulary).

        With ``collapse``, IDs go through the Ensembl mapping dictionary (upper-cased), keeping only
        targets in the vocabulary; without it, only IDs that are vocabulary genes are kept.
        """
        tok = self.token_dict
        mapping = self.ensembl_mapping
        out = []
        for raw in ids:
            g = "" if raw is None else str(raw).strip()
            target = ""
            if g and collapse and mapping:
                m = mapping.get(g.upper()) or mapping.get(g)
                if m is not None and m in tok:
                    target = m
            if not target and g in tok and g not in SPECIAL_TOKENS:
                target = g
            elif not target and g.upper() in tok and g.upper() not in SPECIAL_TOKENS:
                target = g.upper()
            out.append(target)
        return np.array(out, dtype=object)

    def symbols_to_ensembl(self, symbols: Iterable[str]) -> np.ndarray:
        """Map gene symbols to Ensembl IDs via the symbol dictionary, then the mapping dictionary."""
        name_id = self.gene_name_id
        upper = {k.upper(): v for k, v in name_id.items()} if name_id else {}
        mapping = self.ensembl_mapping
        out = []
        symbols = ["" if s is None else str(s).strip() for s in symbols]
        _warn_mouse_style(symbols)
        for s in symbols:
            e = name_id.get(s) or upper.get(s.upper()) or mapping.get(s.upper()) or ""
            out.append(e)
        return np.array(out, dtype=object)

    def tokens_for(self, genes: Iterable[str]) -> list[int]:
        """Token ids of Ensembl IDs or symbols; raises listing every gene not in the vocabulary."""
        genes = list(genes)
        ids, missing = [], []
        for g in genes:
            t = self.token_dict.get(g)
            if t is None:
                e = self.symbols_to_ensembl([g])[0]
                t = self.token_dict.get(e) if e else None
            if t is None:
                missing.append(g)
            else:
                ids.append(t)
        if missing:
            raise KeyError(f"{len(missing)} gene(s) not in the {self.version or 'custom'} vocabulary: {missing}")
        return ids


def load_vocab(version_or_path: str | os.PathLike = "V2") -> GeneVocab:
    """Load a vocabulary by version name ("V1"/"V2") or from a folder."""
    if isinstance(version_or_path, str) and version_or_path.upper() in VERSIONS:
        return GeneVocab.load(version_or_path)
    return GeneVocab.from_dir(version_or_path)


def as_vocab(vocab: "GeneVocab | str | os.PathLike | Mapping | None", version: str = "V2") -> GeneVocab:
    """Accept a GeneVocab, a version name, a folder, or None (→ the published ``version``)."""
    if isinstance(vocab, GeneVocab):
        return vocab
    if vocab is None:
        return GeneVocab.load(version)
    return load_vocab(vocab)
