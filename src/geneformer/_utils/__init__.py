"""Infrastructure shared by every stage (private): atomic writing, safe unpickling, device and
dtype choice, argument validation, shared parameter docs, progress bars, worker processes, errors."""

from ._atomic import (
    atomic_folder,
    atomic_path,
    json_default,
    move_contents,
    refuse_existing,
    save_dataset,
    save_figure,
    temp_path,
    write_bytes,
    write_csv,
    write_json,
    write_parquet,
    write_pickle,
    write_text,
    write_with,
)
from ._device import (
    autocast,
    bf16_supported,
    compute_dtype,
    cuda_available,
    free_memory_bytes,
    itemsize,
    model_device,
    rank,
    resolve_device,
    resolve_dtype,
    torch_threads,
    trainer_device_args,
    usable_cpus,
    world_size,
)
from ._docs import doc_params
from ._errors import (
    ClassifierDataError,
    CorpusError,
    GeneformerError,
    InputError,
    InputFileError,
    ModelLoadError,
    OptionError,
    QuantizationError,
    VocabularyError,
)
from ._hub import forget_hub_probe, hub_endpoint, hub_offline, hub_offline_reason, hub_reachable
from ._pickle import PlainDataUnpickler, load_plain
from ._progress import progress_bar, quiet_transformers, show_progress
from ._validation import (
    check_cell_states,
    check_choice,
    check_columns_listed,
    check_emb_layer,
    check_filter_data,
    check_fraction,
    check_model_version,
    check_positive_int,
    state_list,
)
from ._workers import WorkerError, ordered_map

__all__ = [
    "ClassifierDataError", "CorpusError", "GeneformerError", "InputError", "InputFileError", "ModelLoadError",
    "OptionError", "PlainDataUnpickler", "QuantizationError", "VocabularyError", "WorkerError", "atomic_folder",
    "atomic_path", "autocast", "json_default", "bf16_supported", "check_cell_states", "check_choice", "check_columns_listed",
    "check_emb_layer", "check_filter_data", "check_fraction", "check_model_version", "check_positive_int",
    "compute_dtype", "cuda_available", "doc_params", "forget_hub_probe", "free_memory_bytes", "hub_endpoint", "hub_offline", "hub_offline_reason",
    "hub_reachable", "itemsize",
    "load_plain", "model_device", "move_contents", "ordered_map", "progress_bar", "quiet_transformers", "rank", "refuse_existing",
    "resolve_device", "resolve_dtype", "save_dataset", "save_figure", "show_progress", "state_list",
    "temp_path", "torch_threads", "trainer_device_args", "usable_cpus", "world_size", "write_bytes", "write_csv", "write_json", "write_parquet",
    "write_pickle", "write_text", "write_with",
]
