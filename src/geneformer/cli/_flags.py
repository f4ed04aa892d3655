"""The command line's spelling of the core's parameter names, for messages that name a parameter.

The core's errors name Python parameters (``custom_attr_name_dict``, ``emb_layer``); a command line
user needs the flag. :func:`cli_spelling` rewrites those names in a message; every place that turns an
error into ``error: ...`` passes the message through it.
"""

from __future__ import annotations

import re

#: core parameter -> the flag that sets it (``custom_attr_name_dict`` belongs to ``geneformer tokenize``)
CLI_SPELLINGS: dict[str, str] = {
    "custom_attr_name_dict": "`geneformer tokenize --attr COLUMN`",
    "gene_id_column": "--gene-id-column",
    "gene_symbol_column": "--gene-symbol-column",
    "gene_names": "--gene-names",
    "emb_layer": "--emb-layer",
    "max_ncells": "--max-ncells",
    "model_version": "--model-version",
    "forward_batch_size": "--batch-size",
    "chunk_size": "--chunk-size",
    "file_format": "--file-format",
    "state_embs_dict": "--state-embs",
}

_NAMES = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, CLI_SPELLINGS)) + r")(?![\w(])(=)?")


def cli_spelling(message: str) -> str:
    """``message`` with every core parameter name of :data:`CLI_SPELLINGS` replaced by its flag
    (``name=value`` becomes ``--flag value``)."""
    return _NAMES.sub(lambda m: CLI_SPELLINGS[m.group(1)] + (" " if m.group(2) else ""), message)
