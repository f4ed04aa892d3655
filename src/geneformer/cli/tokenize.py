"""``geneformer tokenize``: rank value encode single-cell files into a Hugging Face dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = """
Examples:

  geneformer tokenize pbmc.h5ad --output tokens/ --attr cell_type --attr donor=patient

  geneformer tokenize a.loom b.loom --output tokens/ --prefix corpus --model-version V1 --nproc 2

  geneformer tokenize filtered_feature_bc_matrix.h5 --output tokens/ --gene-symbol-column gene_symbol
"""


def _parse_attrs(attrs: list[str]) -> dict[str, str]:
    out = {}
    for a in attrs:
        src, _, dst = a.partition("=")
        out[src] = dst or src
    return out


def tokenize(
    inputs: List[Path] = typer.Argument(..., help="Input files: .h5ad, .zarr, .loom, 10x .h5 or 10x MTX folders."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the output dataset."),
    prefix: Optional[str] = typer.Option(None, help="Dataset name (default: the first input's stem)."),
    model_version: str = typer.Option("V2", "--model-version", help="V1 (2,048 genes) or V2 (<cls> + 4,094 + <eos>)."),
    vocab: Optional[Path] = typer.Option(None, help="A vocabulary folder (from build-vocab) instead of V1/V2."),
    attr: List[str] = typer.Option([], "--attr", help="Cell attribute to carry, COL or COL=NEW_NAME; repeatable."),
    nproc: Optional[int] = typer.Option(None, help="Worker processes (default: the CPUs this process may use)."),
    chunk_size: int = typer.Option(512, help="Cells per chunk."),
    file_format: Optional[str] = typer.Option(None, help="Force a format: h5ad, zarr, loom, 10x_h5, 10x_mtx."),
    gene_id_column: Optional[str] = typer.Option(None, help="var column holding Ensembl IDs."),
    gene_symbol_column: Optional[str] = typer.Option(None, help="var column holding gene symbols ('index' for the index)."),
    layer: Optional[str] = typer.Option(None, help="Read counts from this layer ('raw' for raw.X)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output dataset."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Tokenize single-cell files (rank value encoding) into one Hugging Face dataset."""
    from .._utils import InputFileError, VocabularyError, check_model_version, usable_cpus
    from ..tokenization import dataset_path, tokenize_files
    from ..vocab import GeneVocab
    from ._flags import cli_spelling

    try:
        v = GeneVocab.from_dir(vocab) if vocab is not None else check_model_version(model_version)
        out = dataset_path(output, prefix or Path(inputs[0]).name.split(".")[0])
        ds = tokenize_files(
            [str(p) for p in inputs], out, v, file_format=file_format, overwrite=overwrite,
            custom_attr_name_dict=_parse_attrs(attr), nproc=nproc or usable_cpus(), chunk_size=chunk_size,
            gene_id_column=gene_id_column, gene_symbol_column=gene_symbol_column, layer=layer,
            progress=False if quiet else None,
        )
    except (InputFileError, VocabularyError, FileExistsError, ValueError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        typer.secho(f"error: {cli_spelling(msg)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"Wrote {len(ds)} cells to {out}")


def register(app: typer.Typer) -> None:
    app.command("tokenize", help=(tokenize.__doc__ or "") + "\n" + EXAMPLES)(tokenize)
