"""``geneformer build-vocab``: gene medians and a token dictionary for a new pretraining corpus."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = """
Examples:

  geneformer build-vocab corpus/*.h5ad --output vocab/ --name mycorpus

  geneformer build-vocab a.loom b.loom --output vocab/ --approx --nproc 4 --min-cells 10

  geneformer build-vocab pbmc.h5ad --output vocab/ --gene-type protein_coding --gene-type miRNA --no-special-tokens

  geneformer build-vocab vocab/gene_digests_old.npz new_batch.h5ad --output vocab2/

  geneformer build-vocab corpus/*.h5ad --output vocab/ --exact --shard 3/8   # then: geneformer merge vocab/

The folder then holds token_dictionary_NAME.pkl and gene_median_dictionary_NAME.pkl (the published layout), the same as JSON (load with GeneVocab.from_dir or `geneformer tokenize --vocab`), and gene_stats_NAME.tsv with each gene's median and detection count. Inputs ending in .npz are sketches saved earlier with --save-digests, merged with the new data.
"""


class _GeneTypeFilter:
    """Keep genes whose ``gene_type`` is one of the given types (picklable for worker processes)."""

    def __init__(self, column: str, types: list[str]):
        self.column, self.types = column, list(types)

    def __call__(self, var):
        if self.column not in var.columns:
            raise KeyError(f"--gene-type needs a gene column {self.column!r}; the gene table has {list(var.columns)}.")
        return var[self.column].astype(str).isin(self.types).to_numpy()


def build_vocab_command(
    inputs: List[Path] = typer.Argument(..., help="Input files: .h5ad, .zarr, .loom, 10x .h5, 10x MTX folders, "
                                             "or .npz sketches from --save-digests."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the vocabulary files."),
    name: str = typer.Option("custom", "--name", help="Suffix of the dictionary file names."),
    special_tokens: bool = typer.Option(True, "--special-tokens/--no-special-tokens",
                                        help="Add <cls> and <eos> after <pad> and <mask>."),
    exact: Optional[bool] = typer.Option(None, "--exact/--approx",
                                         help="Exact medians, or t-digest estimates (default: exact while small)."),
    nproc: int = typer.Option(1, "--nproc", help="Worker processes."),
    min_cells: int = typer.Option(1, "--min-cells", help="Keep genes detected in at least this many cells."),
    chunk_size: int = typer.Option(2048, "--chunk-size", help="Cells per chunk."),
    file_format: Optional[str] = typer.Option(None, "--file-format",
                                              help="Force a format: h5ad, zarr, loom, 10x_h5, 10x_mtx."),
    gene_id_column: str = typer.Option("ensembl_id", "--gene-id-column",
                                       help="Gene column with Ensembl IDs (falls back to the gene index)."),
    gene_type: List[str] = typer.Option([], "--gene-type",
                                        help="Keep only genes of this type (column gene_type); repeatable."),
    save_digests: bool = typer.Option(False, "--save-digests",
                                      help="Also write gene_digests_NAME.npz to merge with later corpora."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Do only slice I of N (from 0) into a part beside "
                                        "the output; then `geneformer merge OUTPUT`. A finished shard is not redone."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an existing vocabulary in "
                                   "--output; with --shard, redo a finished shard."),
) -> None:
    """Estimate non-zero gene medians over a corpus and write a new gene vocabulary."""
    from .._utils import check_inputs_exist
    from ..vocab import build_corpus_vocab

    check_inputs_exist(inputs)
    data = [str(p) for p in inputs if p.suffix != ".npz"]
    saved = [p for p in inputs if p.suffix == ".npz"]
    done = build_corpus_vocab(
        data, output, name=name, special_tokens=special_tokens, min_cells=min_cells, saved_digests=saved,
        save_digests=save_digests, shard=shard, overwrite=overwrite, file_format=file_format,
        gene_id_column=gene_id_column, exact=exact, chunk_size=chunk_size, nproc=nproc,
        gene_filter=_GeneTypeFilter("gene_type", gene_type) if gene_type else None,
    )
    digests, vocab = done.digests, done.vocab
    if vocab is None:
        typer.echo(f"shard {shard}: {digests.n_cells} cells sketched into {done.path}; "
                   f"run `geneformer merge {output}` once every shard has finished")
        return
    typer.echo(f"{digests.n_cells} cells, {len(vocab.gene_medians)} genes detected ({digests.mode} medians); "
               f"wrote a {vocab.size}-token vocabulary to {output}")


def register(app: typer.Typer) -> None:
    app.command("build-vocab", help=(build_vocab_command.__doc__ or "") + "\n" + EXAMPLES)(build_vocab_command)
