"""Command-line interface: one sub-command per stage (see ``geneformer --help``)."""
