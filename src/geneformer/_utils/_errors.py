"""The package's exception types: one base class, one subclass per kind of bad input.

Every class is also a ``ValueError`` (what the reference raised, and what callers catch), and the
command line turns any :class:`GeneformerError` into a one-line message with exit code 2.
"""

from __future__ import annotations


class GeneformerError(Exception):
    """Base class of every error this package raises about its inputs."""


class InputFileError(GeneformerError, ValueError):
    """An input file is missing, truncated, unreadable or lacks what tokenization needs."""


class VocabularyError(GeneformerError, ValueError):
    """A vocabulary file is missing, unreadable or inconsistent."""


class ModelLoadError(GeneformerError, ValueError):
    """A model folder or name cannot be loaded, or does not fit the vocabulary."""


class InputError(GeneformerError, ValueError):
    """Tokenized input that the model cannot take (wrong vocabulary, too long, empty)."""


class OptionError(GeneformerError, ValueError):
    """An argument is out of range or of the wrong kind."""


class CorpusError(GeneformerError, ValueError):
    """The corpus does not fit the model or vocabulary (lengths, token ids, special tokens)."""


class ClassifierDataError(GeneformerError, ValueError):
    """Input data that cannot be used for a classification task (labels, classes, genes, splits)."""


class QuantizationError(GeneformerError, ValueError):
    """Quantization was asked for where it cannot run."""


class OutputExistsError(GeneformerError, FileExistsError):
    """An output already exists and replacing it was not asked for (the message names the flag)."""


class OutputLockedError(GeneformerError, RuntimeError):
    """Another run is writing the same output right now."""
