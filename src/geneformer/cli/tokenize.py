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

  geneformer tokenize corpus/*.h5ad --output tokens/ --prefix corpus --shard 3/8   # then: geneformer merge tokens/corpus.dataset

  geneformer tokenize census/homo_sapiens --output tokens/ --prefix blood --obs-filter "tissue_general == 'blood'" --attr cell_type
"""


def _parse_attrs(attrs: list[str]) -> dict[str, str]:
    from .._utils import OptionError

    out = {}
    for a in attrs:
        src, _, dst = a.partition("=")
        if not src or (_ and not dst):
            raise OptionError(f"--attr {a!r}: use COL or COL=NEW_NAME.")
        if src in out:
            raise OptionError(f"--attr names cell attribute {src!r} twice.")
        out[src] = dst or src
    return out


def tokenize(
    inputs: List[str] = typer.Argument(..., help="Input files: .h5ad, .zarr, .loom, 10x .h5, 10x MTX folders, "
                                       "or TileDB-SOMA experiment URIs."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the output dataset."),
    prefix: Optional[str] = typer.Option(None, help="Dataset name (default: the first input's stem)."),
    model_version: str = typer.Option("V2", "--model-version", help="V1 (2,048 genes) or V2 (<cls> + 4,094 + <eos>)."),
    vocab: Optional[Path] = typer.Option(None, help="A vocabulary folder (from build-vocab) instead of V1/V2."),
    attr: List[str] = typer.Option([], "--attr", help="Cell attribute to carry, COL or COL=NEW_NAME; repeatable."),
    nproc: Optional[int] = typer.Option(None, help="Worker processes (default: the CPUs this process may use)."),
    chunk_size: int = typer.Option(512, help="Cells per chunk."),
    file_format: Optional[str] = typer.Option(None, help="Force a format: h5ad, zarr, loom, 10x_h5, 10x_mtx, soma."),
    gene_id_column: Optional[str] = typer.Option(None, help="var column holding Ensembl IDs."),
    gene_symbol_column: Optional[str] = typer.Option(None, help="var column holding gene symbols ('index' for the index)."),
    layer: Optional[str] = typer.Option(None, help="Read counts from this layer ('raw' for raw.X; "
                                        "for SOMA the X layer, default raw)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output dataset (with --shard: redo the shard)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Do only slice I of N (from 0) into a part beside "
                                        "the output; then `geneformer merge OUTPUT`. A finished shard is not redone."),
    measurement: Optional[str] = typer.Option(None, help="SOMA: the measurement (default RNA)."),
    obs_filter: Optional[str] = typer.Option(None, "--obs-filter",
                                             help="SOMA: obs value filter, e.g. \"tissue_general == 'blood'\"."),
    var_id_column: Optional[str] = typer.Option(None, "--var-id-column",
                                                help="SOMA: the var column of Ensembl IDs (default feature_id)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Tokenize single-cell files (rank value encoding) into one Hugging Face dataset."""
    from .._utils import check_model_version, usable_cpus
    from ..tokenization import dataset_path, tokenize_files
    from ..vocab import GeneVocab

    v = GeneVocab.from_dir(vocab) if vocab is not None else check_model_version(model_version)
    out = dataset_path(output, prefix or Path(inputs[0]).name.split(".")[0])
    soma = {"measurement": measurement, "value_filter": obs_filter, "var_id_column": var_id_column}
    ds = tokenize_files(
        list(inputs), out, v, file_format=file_format, overwrite=overwrite,
        custom_attr_name_dict=_parse_attrs(attr), nproc=usable_cpus() if nproc is None else nproc, chunk_size=chunk_size,
        gene_id_column=gene_id_column, gene_symbol_column=gene_symbol_column, layer=layer, shard=shard,
        progress=False if quiet else None,
        reader_options={k: val for k, val in soma.items() if val is not None},
    )
    if shard is not None:
        typer.echo(f"shard {shard}: wrote {len(ds)} cells beside {out}; run `geneformer merge {out}` once "
                   "every shard has finished")
        return
    typer.echo(f"Wrote {len(ds)} cells to {out}")


def register(app: typer.Typer) -> None:
    app.command("tokenize", help=(tokenize.__doc__ or "") + "\n" + EXAMPLES)(tokenize)
