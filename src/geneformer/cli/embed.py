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
    dtype: Optional[str] = typer.Option(None, help="bf16 or fp16 for mixed precision (default fp32)."),
    fmt: str = typer.Option("auto", "--format", help="auto (from the extension), h5ad, parquet, csv or pt."),
    gene_names: Optional[str] = typer.Option(None, help="h5ad input: var column with gene IDs/symbols, or 'index'."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="h5ad input: a vocabulary folder to tokenize with "
                                         "(default: the model's published V1/V2 vocabulary)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from ..embeddings import output_format
    from ._flags import cli_spelling

    try:
        fmt = output_format(output, fmt)
        _run(input, model, output, mode, emb_layer, label or [], max_ncells, batch_size, device, dtype, fmt,
             gene_names, not quiet, vocab)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        typer.secho(f"error: {cli_spelling(msg)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def _run(input, model_name, output, mode, emb_layer, labels, max_ncells, batch_size, device, dtype, fmt,
         gene_names, progress, vocab_dir=None) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    from .._constants import ROW_COLUMN
    from ..data import check_columns, column_values, downsample_and_sort, load_tokenized
    from ..embeddings import _outputs as outputs
    from ..embeddings import cell_embeddings, gene_embeddings
    from ..models import check_vocab_matches, load_model, model_input_size, model_vocab_version
    from ..tokenization import anndata_gene_ids, match_and_tokenize
    from ..vocab import GeneVocab

    if mode not in ("cell", "cls", "gene"):
        raise ValueError(f"--mode must be cell, cls or gene, got {mode!r}.")
    model = load_model(model_name, device=device)
    adata = None
    if input.suffix == ".h5ad":
        adata = ad.read_h5ad(input)
        version = GeneVocab.from_dir(vocab_dir) if vocab_dir is not None else model_vocab_version(model)
        if version is None:
            raise ValueError(f"Model {model_name} has a custom vocabulary; pass its vocabulary folder with --vocab FOLDER.")
        check_vocab_matches(model, version, source=f"Model {model_name}")
        dataset, _ = match_and_tokenize(adata, version, gene_names=gene_names, model_input_size=model_input_size(model),
                                        progress=progress)
    else:
        dataset = load_tokenized(input)
    check_columns(dataset, labels)
    if max_ncells is not None:
        dataset = downsample_and_sort(dataset, max_ncells)
    kw = dict(emb_layer=emb_layer, batch_size=batch_size, device=device, amp_dtype=dtype, progress=progress)
    if mode == "gene":
        df = gene_embeddings(model, dataset, **kw).to_frame(None, model)
        if fmt == "h5ad":
            if adata is None:
                raise ValueError("Gene embeddings go to .h5ad only for .h5ad input; use .parquet or .csv.")
            outputs.add_gene_embeddings(adata, df, gene_ids=anndata_gene_ids(adata, version, gene_names))
            outputs.write_h5ad(adata, output)
        elif fmt == "pt":
            outputs.write_tensor(df, output)
        else:
            if adata is None:
                version = GeneVocab.from_dir(vocab_dir) if vocab_dir is not None else model_vocab_version(model)
            _write_table(_with_symbols(df, version), output, fmt)
        typer.echo(f"Wrote embeddings of {len(df)} genes ({df.shape[1]} dims) to {output}")
        return
    embs = cell_embeddings(model, dataset, mode=mode, **kw)
    label_values = {c: column_values(dataset, c) for c in labels}
    if fmt == "h5ad":
        if adata is None or max_ncells is not None:
            obs = {c: np.asarray(v) for c, v in label_values.items()}
            sub = ad.AnnData(X=embs, obs=pd.DataFrame(obs, index=[str(i) for i in range(len(embs))]))
            sub.obsm[outputs.OBSM_KEY] = embs
            outputs.write_h5ad(sub, output)
        else:
            rows = np.asarray(column_values(dataset, ROW_COLUMN), dtype=np.int64)
            outputs.add_cell_embeddings(adata, embs, rows=rows)
            outputs.write_h5ad(adata, output)
    else:
        _write_table(outputs.embedding_frame(embs, label_values), output, fmt)
    typer.echo(f"Wrote {mode} embeddings of {len(embs)} cells ({embs.shape[1]} dims) to {output}")


def _with_symbols(df, vocab):
    """Gene embeddings as a table: ``ensembl_id``, ``symbol`` (empty where unknown), then 0..H-1."""
    from ..vocab import as_vocab

    to_symbol = as_vocab(vocab).ensembl_to_symbol if vocab is not None else {}
    table = df.reset_index(names="ensembl_id")
    table.insert(1, "symbol", [to_symbol.get(str(g), "") for g in table["ensembl_id"]])
    return table


def _write_table(df, output, fmt) -> None:
    from .._utils import write_csv
    from ..embeddings import _outputs as outputs

    if fmt == "csv":
        write_csv(output, df, index=False)  # the columns say what each is: no unnamed index column
    elif fmt == "parquet":
        outputs.write_parquet(df, output)
    else:
        outputs.write_tensor(df, output)


def register(app: typer.Typer) -> None:
    app.command("embed", help=HELP, no_args_is_help=True)(embed_command)
