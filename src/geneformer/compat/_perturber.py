"""``InSilicoPerturber``: the reference's perturber API on a batched, resumable core.

Usage (reference arguments and defaults; SPEC 7)::

    isp = InSilicoPerturber(perturb_type="delete", genes_to_perturb="all", emb_mode="cell_and_gene",
                            max_ncells=100, model_version="V1")
    isp.perturb_data("mini-V1/", "cells.dataset", "out/", "run1")
    # out/in_silico_delete_run1.parquet             tidy table, one row per value
    # out/in_silico_delete_run1_dict_*_raw.pickle   the reference's dictionaries (InSilicoPerturberStats)

Differences from the reference (all deliberate):

* ``inhibit`` / ``activate`` work (``perturb_rank_shift`` 1-3 quartiles, see :mod:`.transforms`);
  ``combos=1`` without an anchor perturbs every pair of genes (key: the two tokens, sorted).
* Overexpressed genes' affected-gene labels are aligned (the reference shifted them by one);
  ``n_overflow`` counts added genes once; genes missing from the vocabulary are an error listing them.
* Every cell's unperturbed states are computed once; perturbed sequences of all genes and cells
  are batched by length; only the needed layer is computed (only ``<cls>`` in the CLS modes).
* Results are written per part, atomically; a rerun skips finished parts (``resume``), and a
  finished run is not recomputed. Several processes (``torchrun``) share the parts: rank r takes
  parts r, r+world, ...; rank 0 merges.
* ``<cls>``/``<eos>`` are read from the cells (the reference trusted the dictionary); with them,
  the "cell" modes average the genes between the two.
* ``filter_data`` matches values by equality (the reference's string values matched substrings).

Several processes: launch the same script with ``torchrun --nproc-per-node N script.py`` (or set
``RANK``/``WORLD_SIZE``); each rank computes its share of the parts on its own GPU (``LOCAL_RANK``)
and writes them to the shared parts folder; rank 0 waits for all parts (a barrier when a process
group is initialised, else by polling the folder) and writes the final outputs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._constants import PERTURB_EMB_MODES
from .._utils import InputError, ModelLoadError, check_cell_states, resolve_device, resolve_dtype
from ..inference import auto_token_budget, validate_sequences
from ..models import check_vocab_matches, layer_index, load_model, model_input_size, normalise_kind
from ..perturb import _transforms as T
from ..perturb._engine import RunSettings, build_part, plan_parts, run_part
from ..perturb._selection import CellSelection, select_cells
from ..perturb._store import RunStore, fingerprint, part_table, raw_file_names

logger = logging.getLogger(__name__)

MODEL_TYPES = ("Pretrained", "GeneClassifier", "CellClassifier", "MTLCellClassifier",
               "Pretrained-Quantized", "MTLCellClassifier-Quantized")

__all__ = ["InSilicoPerturber", "MODEL_TYPES"]


def _part_done_hook(part_index: int) -> None:
    """Called after each part is safely on disk (tests replace it to simulate a crash)."""


class InSilicoPerturber:
    """Perturb genes in silico and measure the embedding shifts (reference-compatible).

    Args (reference defaults): perturb_type "delete" | "overexpress" | "inhibit" | "activate";
    perturb_rank_shift None | 1 | 2 | 3 (quartiles; inhibit/activate only); genes_to_perturb "all"
    or a list of Ensembl IDs (or symbols) perturbed together; combos 0 | 1; anchor_gene;
    model_type "Pretrained" | "GeneClassifier" | "CellClassifier" | "MTLCellClassifier";
    num_classes; emb_mode "cls" | "cell" | "cls_and_gene" | "cell_and_gene"; cell_emb_style
    "mean_pool"; filter_data {column: values}; cell_states_to_model {state_key, start_state,
    goal_state, alt_states}; state_embs_dict {state: tensor(H)} (or the path of its pickle);
    max_ncells; cell_inds_to_perturb "all" | {"start", "end"}; emb_layer (-1: second-to-last layer,
    0: last); forward_batch_size (most sequences per forward; None: only the token budget);
    nproc (unused: nothing needs worker processes); model_version "V1" | "V2";
    token_dictionary_file; clear_mem_ncells (perturbations per results part).

    Extra: device (None: CUDA when available), dtype ("bf16"/"fp16" autocast; None: fp32),
    token_budget (tokens per forward; None: from free memory), resume (reuse finished parts),
    keep_parts, write_raw (the reference's pickles), cell_id_column (None: detect), progress.
    """

    def __init__(
        self,
        perturb_type: str = "delete",
        perturb_rank_shift: int | None = None,
        genes_to_perturb: str | Sequence[str] = "all",
        combos: int = 0,
        anchor_gene: str | None = None,
        model_type: str = "Pretrained",
        num_classes: int = 0,
        emb_mode: str = "cls",
        cell_emb_style: str = "mean_pool",
        filter_data: Mapping[str, Any] | None = None,
        cell_states_to_model: Mapping[str, Any] | None = None,
        state_embs_dict: Mapping[Any, Any] | str | os.PathLike | None = None,
        max_ncells: int | None = None,
        cell_inds_to_perturb: str | Mapping[str, int] = "all",
        emb_layer: int = -1,
        forward_batch_size: int | None = 100,
        nproc: int = 4,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        clear_mem_ncells: int = 1000,
        *,
        device: Any = None,
        dtype: Any = None,
        token_budget: int | None = None,
        resume: bool = True,
        keep_parts: bool = False,
        write_raw: bool = True,
        cell_id_column: str | None = None,
        progress: bool = True,
    ):
        self.perturb_type = perturb_type
        self.perturb_rank_shift = perturb_rank_shift
        self.genes_to_perturb = genes_to_perturb
        self.combos = combos
        self.anchor_gene = anchor_gene
        self.model_type = model_type
        self.num_classes = num_classes
        self.emb_mode = emb_mode
        self.cell_emb_style = cell_emb_style
        self.filter_data = filter_data
        self.cell_states_to_model = cell_states_to_model
        self.state_embs_dict = state_embs_dict
        self.max_ncells = max_ncells
        self.cell_inds_to_perturb = cell_inds_to_perturb
        self.emb_layer = emb_layer
        self.forward_batch_size = forward_batch_size
        self.nproc = nproc
        self.model_version = str(model_version).upper()
        self.token_dictionary_file = token_dictionary_file
        self.clear_mem_ncells = clear_mem_ncells
        self.device = device
        self.dtype = dtype
        self.token_budget = token_budget
        self.resume = resume
        self.keep_parts = keep_parts
        self.write_raw = write_raw
        self.cell_id_column = cell_id_column
        self.progress = progress
        self._validate()

    # ---- validation -----------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.perturb_type not in T.PERTURB_TYPES:
            raise ValueError(f"perturb_type must be one of {T.PERTURB_TYPES}, got {self.perturb_type!r}.")
        if self.perturb_type in ("delete", "overexpress"):
            if self.perturb_rank_shift is not None:
                logger.warning("perturb_rank_shift only applies to inhibit/activate; ignoring it for %s.",
                               self.perturb_type)
            self.perturb_rank_shift = None
        elif self.perturb_rank_shift not in (1, 2, 3):
            raise ValueError(
                f"perturb_type={self.perturb_type!r} needs perturb_rank_shift 1, 2 or 3 (how many quartiles of "
                f"the cell's genes the gene moves), got {self.perturb_rank_shift!r}."
            )
        if self.model_version not in ("V1", "V2"):
            raise ValueError(f"model_version must be 'V1' or 'V2', got {self.model_version!r}.")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}.")
        if self.emb_mode not in PERTURB_EMB_MODES:
            raise ValueError(f"emb_mode must be one of {PERTURB_EMB_MODES}, got {self.emb_mode!r}.")
        if self.cell_emb_style != "mean_pool":
            raise ValueError("cell_emb_style must be 'mean_pool' (the only option).")
        if self.combos not in (0, 1):
            raise ValueError(f"combos must be 0 or 1, got {self.combos!r}.")
        if self.max_ncells is not None and int(self.max_ncells) < 1:
            raise ValueError("max_ncells must be a positive integer or None.")
        if self.forward_batch_size is not None and int(self.forward_batch_size) < 1:
            raise ValueError("forward_batch_size must be >= 1 (or None to fill batches by tokens).")
        if int(self.clear_mem_ncells) < 1:
            raise ValueError("clear_mem_ncells must be >= 1.")
        if int(self.emb_layer) > 0:
            raise ValueError(f"emb_layer must be 0 (last layer), -1 (second-to-last) or lower, got {self.emb_layer}.")
        if self.filter_data is not None and not isinstance(self.filter_data, Mapping):
            raise ValueError("filter_data must be a dict {column: [values]}.")

        # genes
        self._vocab = self._load_vocab()
        if isinstance(self.genes_to_perturb, str) and self.genes_to_perturb != "all":
            self.genes_to_perturb = [self.genes_to_perturb]
        if self.genes_to_perturb == "all":
            self.tokens_to_perturb = None
        else:
            genes = list(dict.fromkeys(self.genes_to_perturb))  # drop repeats, keep order
            if not genes:
                raise ValueError('genes_to_perturb is an empty list; give Ensembl IDs or "all".')
            self.tokens_to_perturb = self._tokens(genes, "genes_to_perturb")
            if self.anchor_gene is not None or self.combos:
                logger.warning("A gene list is perturbed as one group: anchor_gene and combos are ignored.")
            self.anchor_gene, self.combos = None, 0

        # states
        self.states = None
        if self.cell_states_to_model is not None:
            self.states = check_cell_states(self.cell_states_to_model)
            self.cell_states_to_model = self.states
            if self.anchor_gene is not None:
                logger.warning("anchor_gene is not used when modelling cell states; ignoring it.")
                self.anchor_gene = None
            self._state_embs = self._check_state_embs()
        elif self.state_embs_dict is not None:
            logger.warning("state_embs_dict is only used with cell_states_to_model; ignoring it.")

        # anchor / combos
        self.anchor_token = None
        if self.anchor_gene is not None:
            self.anchor_token = self._tokens([self.anchor_gene], "anchor_gene")[0]
            if self.combos == 0:
                raise ValueError(
                    "anchor_gene needs combos=1 (the anchor is perturbed together with each other gene). To "
                    f"measure the effect of perturbing the anchor alone, use genes_to_perturb=[{self.anchor_gene!r}] "
                    "with emb_mode='cell_and_gene'."
                )
            if self.emb_mode.endswith("_and_gene"):
                logger.warning("With an anchor gene only cell-level shifts are computed (emb_mode %s -> %s).",
                               self.emb_mode, self.emb_mode.replace("_and_gene", ""))
                self.emb_mode = self.emb_mode.replace("_and_gene", "")
        if self.emb_mode.startswith("cls") and self._special_ids()[0] is None:
            raise ValueError(
                f"emb_mode={self.emb_mode!r} needs a <cls> token, which the {self.model_version} vocabulary does "
                "not have; use emb_mode='cell' or 'cell_and_gene' (V1 models), or a V2 model."
            )

    def _load_vocab(self):
        if self.token_dictionary_file is not None:
            from ..vocab import load_dict_file

            return {str(k): int(v) for k, v in load_dict_file(self.token_dictionary_file).items()}
        from ..vocab import GeneVocab

        return GeneVocab.load(self.model_version)

    @property
    def token_dict(self) -> dict[str, int]:
        return self._vocab if isinstance(self._vocab, dict) else self._vocab.token_dict

    def _special_ids(self) -> tuple[int | None, int | None]:
        td = self.token_dict
        return td.get("<cls>"), td.get("<eos>")

    def _tokens(self, genes: Sequence[str], what: str) -> list[int]:
        if isinstance(self._vocab, dict):
            missing = [g for g in genes if g not in self._vocab]
            if missing:
                raise KeyError(f"{what}: {len(missing)} gene(s) not in the token dictionary "
                               f"{self.token_dictionary_file}: {missing}")
            return [int(self._vocab[g]) for g in genes]
        try:
            return [int(t) for t in self._vocab.tokens_for(genes)]
        except KeyError as exc:
            msg = exc.args[0] if exc.args else str(exc)
            raise KeyError(f"{what}: {msg}. Use Ensembl IDs (or symbols) of the {self.model_version} "
                           "vocabulary.") from None

    def _check_state_embs(self) -> dict:
        embs = self.state_embs_dict
        if embs is None:
            raise ValueError("cell_states_to_model needs state_embs_dict ({state: embedding}); make it with "
                             "EmbExtractor.get_state_embs.")
        if isinstance(embs, (str, os.PathLike)):
            from ..embeddings import load_state_embs

            embs = load_state_embs(embs)
        if not isinstance(embs, Mapping):
            raise ValueError("state_embs_dict must be a dict {state: tensor(H)} or the path of its pickle.")
        wanted = self.state_list
        missing = [s for s in wanted if s not in embs]
        if missing:
            raise KeyError(f"state_embs_dict has no embedding for state(s) {missing}; it has {list(embs)}.")
        out = {}
        for s in wanted:
            v = torch.as_tensor(np.asarray(embs[s].detach().cpu() if torch.is_tensor(embs[s]) else embs[s]),
                                dtype=torch.float32).reshape(-1)
            out[s] = v
        dims = {v.numel() for v in out.values()}
        if len(dims) != 1:
            raise ValueError(f"state embeddings have different sizes {sorted(dims)}.")
        return out

    @property
    def state_list(self) -> list:
        if not self.states:
            return []
        return [self.states["start_state"], self.states["goal_state"], *self.states["alt_states"]]

    # ---- model ----------------------------------------------------------------------------------
    def _load(self, model_directory: Any) -> Any:
        if not isinstance(model_directory, (str, os.PathLike)):
            model = model_directory  # an already loaded model
        else:
            kind = self.model_type.replace("-Quantized", "")
            if kind != self.model_type:
                logger.warning("%s: 8-bit loading is not supported here; loading in full precision (pass "
                               "dtype='bf16' for a faster reduced-precision run).", self.model_type)
            # MTL checkpoints hold a BERT encoder under bert.*; a masked-LM class loads exactly those
            kind = "pretrained" if kind in ("Pretrained", "MTLCellClassifier") else normalise_kind(kind)
            num_labels = self.num_classes if kind != "pretrained" and self.num_classes else None
            model = load_model(model_directory, kind=kind, num_labels=num_labels, device=self._device())
        if not isinstance(self._vocab, dict):
            check_vocab_matches(model, self._vocab, source=f"Model {model_directory}"
                                if isinstance(model_directory, (str, os.PathLike)) else "The model")
        elif int(model.config.vocab_size) < max(self._vocab.values()) + 1:
            raise ModelLoadError(
                f"The model's vocab_size {model.config.vocab_size} is smaller than the token dictionary "
                f"{self.token_dictionary_file} ({max(self._vocab.values()) + 1} ids)."
            )
        if hasattr(model, "eval"):
            model.eval()
        return model

    def _device(self) -> torch.device:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.device is None and world > 1 and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return resolve_device(self.device)

    # ---- main entry point -----------------------------------------------------------------------
    def perturb_data(
        self,
        model_directory: Any,
        input_data_file: Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
    ) -> Path | None:
        """Perturb the selected cells and write the tidy parquet and the reference's raw pickles.

        Returns the tidy table's path (None on ranks other than 0 of a multi-process run).
        """
        from ..data import load_tokenized

        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        opp = f"in_silico_{self.perturb_type}_{output_prefix}"
        out_dir = Path(output_directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        store = RunStore(out_dir, opp, rank=rank)

        model = self._load(model_directory)
        device = self._device()
        model.to(device)
        ds = load_tokenized(input_data_file)
        sel = self._select(ds)
        validate_sequences(sel.seqs, model, what=f"{input_data_file}" if isinstance(input_data_file, (str, os.PathLike))
                           else "the dataset")
        settings = self._settings(model, sel)
        state_labels = [str(s) for s in self.state_list] or None
        state_embs = None
        if self.states:
            state_embs = torch.stack([self._state_embs[s] for s in self.state_list])
            if state_embs.shape[1] != int(model.config.hidden_size):
                raise ValueError(f"State embeddings have {state_embs.shape[1]} dimensions but the model's hidden "
                                 f"size is {model.config.hidden_size}; make them with this model.")

        fp = fingerprint(
            settings=asdict(settings), states=state_labels, state_embs=state_embs.numpy().tobytes()
            if state_embs is not None else b"", model=_model_digest(model), rows=sel.rows.tobytes(),
            tokens=sel.seqs.values.tobytes(), offsets=sel.seqs.offsets.tobytes(),
            rows_per_part=int(self.clear_mem_ncells), cell_ids=sel.cell_id_column,
        )
        names = raw_file_names(out_dir, opp, self.tokens_to_perturb)
        if self.resume and store.final_fingerprint() == fp:
            logger.info("%s is already complete; nothing to do.", store.final)
            if rank != 0:
                return None
            wanted = [names["cell"]] + ([names["gene"]] if settings.gene_level else [])
            if self.write_raw and not all(p.is_file() for p in wanted):  # a crash after the table was written
                store.write_raw(names, self._state_objects())
            if not self.keep_parts:
                store.remove_parts()
            return store.final

        parts = plan_parts(sel.seqs.lengths, settings, int(self.clear_mem_ncells))
        max_pert_len = int(sel.seqs.lengths.max()) + (len(self.tokens_to_perturb or ())
                                                      if self.perturb_type == "overexpress" else 0)
        budget = self.token_budget or auto_token_budget(
            model, min(max_pert_len, settings.max_len), device,
            itemsize=2 if resolve_dtype(self.dtype) in (torch.float16, torch.bfloat16) else 4)
        run = store.open(fp, parts, {"token_budget": int(budget), "max_rows": self.forward_batch_size,
                                     "n_cells": len(sel)}, resume=self.resume)
        budget, max_rows = int(run["token_budget"]), run["max_rows"]
        done = store.done_parts(len(parts))
        mine = [i for i in range(len(parts)) if i % world == rank and i not in done]
        if done:
            logger.info("Resuming: %d of %d parts already done.", len(done), len(parts))
        self._run_parts(model, sel, settings, parts, mine, store, fp, budget, max_rows, device, state_embs,
                        state_labels)
        if world > 1:
            if rank != 0:
                _barrier()
                return None
            _barrier()
            _wait_for_parts(store, len(parts))
        store.write_final(len(parts), fp)
        if self.write_raw:
            store.write_raw(names, self._state_objects())
        if not self.keep_parts:
            store.remove_parts()
        logger.info("Wrote %s", store.final)
        return store.final

    def _state_objects(self) -> dict | None:
        return {str(s): s for s in self.state_list} or None

    def _select(self, ds: Any) -> CellSelection:
        tokens = self.tokens_to_perturb
        require = tokens if (tokens is not None and self.perturb_type != "overexpress") else None
        names = None
        if not isinstance(self._vocab, dict):
            inv = self._vocab.id_to_token
            sym = self._vocab.ensembl_to_symbol
            names = {t: f"{sym.get(inv.get(t, ''), '')} {inv.get(t, t)}".strip() for t in
                     (list(tokens or []) + ([self.anchor_token] if self.anchor_token is not None else []))}
        return select_cells(
            ds,
            filter_data=self.filter_data,
            state_key=self.states["state_key"] if self.states else None,
            start_state=self.states["start_state"] if self.states else None,
            require_tokens=require,
            anchor_token=self.anchor_token,
            max_ncells=self.max_ncells,
            cell_inds_to_perturb=self.cell_inds_to_perturb,
            cell_id_column=self.cell_id_column,
            gene_names=names,
        )

    def _settings(self, model: Any, sel: CellSelection) -> RunSettings:
        cls_id, eos_id = self._special_ids()
        first, last = sel.seqs.first_tokens(), sel.seqs.last_tokens()
        has = (first == cls_id) & (last == eos_id) if cls_id is not None and eos_id is not None else \
            np.zeros(len(sel), dtype=bool)
        if has.any() and not has.all():
            bad = np.flatnonzero(~has)[:5].tolist()
            raise InputError(f"Some selected cells start with <cls> and end with <eos> and others do not "
                             f"(e.g. cells {bad} in processing order); tokenize all cells the same way.")
        special = bool(has.all())
        if self.emb_mode.startswith("cls") and not special:
            raise InputError(
                f"emb_mode={self.emb_mode!r} needs cells that start with <cls> and end with <eos>, but these cells "
                "have no special tokens. Tokenize with special_token=True (V2), or use emb_mode='cell'."
            )
        if self.tokens_to_perturb is not None and special:
            specials = {cls_id, eos_id}
            if specials & set(self.tokens_to_perturb):
                raise ValueError("<cls>/<eos> cannot be perturbed.")
        pad = self.token_dict.get("<pad>", 0)
        return RunSettings(
            perturb_type=self.perturb_type,
            rank_shift=self.perturb_rank_shift,
            tokens=tuple(self.tokens_to_perturb) if self.tokens_to_perturb is not None else None,
            combos=int(self.combos),
            anchor_token=self.anchor_token,
            emb_mode=self.emb_mode,
            layer=layer_index(model, int(self.emb_layer)),
            special=special,
            max_len=model_input_size(model),
            n_states=len(self.state_list),
            pad_id=int(pad),
        )

    def _run_parts(self, model, sel, settings, parts, todo, store, fp, budget, max_rows, device, state_embs,
                   state_labels) -> None:
        from tqdm.auto import tqdm

        total = sum(r1 - r0 for i in todo for _, r0, r1 in parts[i])
        amp = resolve_dtype(self.dtype)
        bar = tqdm(total=total, desc=f"in silico {self.perturb_type}", unit="pert", disable=not self.progress)
        t0 = time.perf_counter()
        try:
            for i in todo:
                plan = build_part(sel.seqs, parts[i], settings)
                result = run_part(model, plan, settings, device=device, token_budget=budget, max_rows=max_rows,
                                  state_embs=state_embs, amp_dtype=amp, on_batch=bar.update)
                table = part_table(plan, result, rows=sel.rows, cell_ids=sel.cell_ids, state_labels=state_labels)
                store.write_part(i, table, fp, [list(map(int, s)) for s in parts[i]])
                _part_done_hook(i)
        finally:
            bar.close()
        if todo:
            logger.info("%d perturbations in %.1f s", total, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
def _model_digest(model: Any) -> bytes:
    """A cheap identity of the weights: a strided sample of every parameter (not the whole model)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 2048)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.digest()


def _barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except (RuntimeError, ValueError):  # pragma: no cover - no process group: rank 0 polls the files
        pass


def _wait_for_parts(store: RunStore, n_parts: int, poll_s: float = 5.0) -> None:
    """Rank 0 waits until every part file exists (other ranks write theirs)."""
    missing = n_parts - len(store.done_parts(n_parts))
    while missing:
        logger.info("Waiting for %d part(s) from the other processes...", missing)
        time.sleep(poll_s)
        missing = n_parts - len(store.done_parts(n_parts))

