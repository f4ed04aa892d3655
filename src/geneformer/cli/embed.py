"""``geneformer embed``: cell or gene embeddings of a tokenized dataset or an h5ad file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

logger = logging.getLogger(__name__)

HELP = """Embed cells (or genes) with a Geneformer model.

INPUT is a tokenized dataset folder (from `geneformer tokenize`) or an .h5ad file (tokenized on the
fly for the model). The output format follows the file name: .h5ad (embeddings in
obsm['X_geneformer']), .parquet, .csv (the reference layout: columns 0..H-1 then labels) or .pt.

Examples:

  geneformer embed pbmc.dataset --model Geneformer-V2-104M --output pbmc_embs.parquet --label cell_type

  geneformer embed pbmc.h5ad --model ./my_model --output pbmc_embedded.h5ad --mode cls

  geneformer embed pbmc.dataset --model gf-6L-30M-i2048 --mode gene --output genes.csv

Large data: `--shard I/N` embeds one of N slices (any scheduler can run them; then
`geneformer merge OUTPUT`); `torchrun --nproc_per_node K -m geneformer.cli.embed ...` (same
arguments) shares the work among K processes, one per GPU, and writes the one output.
"""


def embed_command(
    input: Path = typer.Argument(..., help="Tokenized dataset folder or .h5ad file.", exists=True),
    model: str = typer.Option(..., "--model", "-m", help="Zoo name (see `geneformer models`) or model folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Output file: .h5ad, .parquet, .csv or .pt."),
    mode: str = typer.Option("cell", help="cell (mean over genes), cls (<cls> state) or gene."),
    emb_layer: int = typer.Option(-1, help="0 = last layer, -1 = second-to-last (reference meaning)."),
    label: Optional[List[str]] = typer.Option(None, "--label", "-l", help="Dataset column(s) to carry along."),
    max_ncells: Optional[int] = typer.Option(None, help="Embed at most this many cells (shuffled, seed 42)."),
    batch_size: Optional[int] = typer.Option(None, help="Cells per batch (default: from free memory)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="fp32, bf16 or fp16 (default: bf16 on a CUDA GPU that supports it, else fp32)."),
    fmt: str = typer.Option("auto", "--format", help="auto (from the extension), h5ad, parquet, csv or pt."),
    gene_names: Optional[str] = typer.Option(None, help="h5ad input: var column with gene IDs/symbols, or 'index'."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="h5ad input: a vocabulary folder to tokenize with "
                                         "(default: the model's published V1/V2 vocabulary)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: embed only slice I (from 0) of N; then `geneformer merge OUTPUT`."
    ),
    chunk_rows: int = typer.Option(4096, "--chunk-rows", help="Cells per chunk file (the unit of resuming)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file (with --shard: "
                                   "redo the shard)."),
) -> None:
    from .._utils import InputFileError, check_positive_int, refuse_existing
    from ..embeddings import output_format

    fmt = output_format(output, fmt)
    if output.is_dir():
        raise InputFileError(f"--output {output} is a folder; give a file name (.h5ad, .parquet, .csv or .pt).")
    if shard is None:  # a shard writes its part beside the output, not the output
        refuse_existing(output, overwrite)
    check_positive_int("--max-ncells", max_ncells, allow_none=True)
    check_positive_int("--batch-size", batch_size, allow_none=True)
    _run(input, model, output, mode, emb_layer, label or [], max_ncells, batch_size, device, dtype, fmt,
         gene_names, not quiet, shard, chunk_rows, resume=not overwrite, vocab_dir=vocab)


def _run(input, model_name, output, mode, emb_layer, labels, max_ncells, batch_size, device, dtype, fmt,
         gene_names, progress, shard=None, chunk_rows=4096, resume=True, vocab_dir=None) -> None:

    from .._utils import InputFileError
    from ..data import load_tokenized
    from ..embeddings import embed_to_file
    from ..io import read_anndata
    from ..models import check_vocab_matches, load_model, model_input_size, model_vocab_version
    from ..tokenization import match_and_tokenize
    from ..vocab import GeneVocab

    if mode not in ("cell", "cls", "gene"):
        raise ValueError(f"--mode must be cell, cls or gene, got {mode!r}.")
    model = load_model(model_name, device=device)
    adata = None
    if input.suffix == ".h5ad":
        adata = read_anndata(input)
        version = GeneVocab.from_dir(vocab_dir) if vocab_dir is not None else model_vocab_version(model)
        if version is None:
            raise ValueError(f"Model {model_name} has a custom vocabulary; pass its vocabulary folder with --vocab FOLDER.")
        check_vocab_matches(model, version, source=f"Model {model_name}")
        try:
            dataset, _ = match_and_tokenize(adata, version, gene_names=gene_names,
                                            model_input_size=model_input_size(model), progress=progress)
        except InputFileError as exc:  # the AnnData is in memory by now: name the file it came from
            raise InputFileError(f"{input}: {exc}") from exc
        if shard is not None:
            adata = input  # a shard's merge reads the source again
    else:
        dataset = load_tokenized(input)
    path = embed_to_file(model, dataset, output, mode=mode, emb_layer=emb_layer, labels=labels, max_ncells=max_ncells,
                         batch_size=batch_size, device=device, dtype=dtype, fmt=fmt,
                         adata=adata if fmt == "h5ad" else None, shard=shard, chunk_rows=chunk_rows,
                         resume=resume, gene_names=gene_names, vocab=version if adata is not None else None,
                         progress=progress)
    if path is not None:  # None: another rank's process, or a shard (the log says how to merge)
        typer.echo(f"Wrote {mode} embeddings to {output}")


def register(app: typer.Typer) -> None:
    app.command("embed", help=HELP, no_args_is_help=True)(embed_command)


if __name__ == "__main__":  # torchrun --nproc_per_node K -m geneformer.cli.embed ...
    from .main import run_command

    run_command(register)
