"""Infrastructure shared by every stage (private): atomic writing, safe unpickling, device and
dtype choice, argument validation, shared parameter docs, progress bars, worker processes, errors."""

from ._atomic import (
    atomic_folder,
    atomic_path,
    json_default,
    lock_path,
    move_contents,
    output_lock,
    refuse_existing,
    remove_stale_temporaries,
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
    barrier,
    bf16_supported,
    cgroup_cpu_quota,
    compute_dtype,
    cuda_available,
    free_memory_bytes,
    host_to_device,
    init_distributed,
    itemsize,
    limit_cpu_threads,
    local_rank,
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
    OutputExistsError,
    OutputLockedError,
    QuantizationError,
    VocabularyError,
)
from ._hub import forget_hub_probe, hub_endpoint, hub_offline, hub_offline_reason, hub_reachable
from ._optional import optional_module
from ._pickle import PlainDataUnpickler, load_plain, load_plain_file
from ._progress import progress_bar, quiet_transformers, show_progress
from ._shards import (
    Shard,
    ShardError,
    assign_balanced,
    attention_cost,
    balanced_bounds,
    completed_shards,
    fingerprint,
    mark_shard_done,
    model_digest,
    parse_shard,
    shard_bounds,
    shard_done,
    shard_part,
    shard_record,
    shards_dir,
)
from ._validation import (
    check_attr_map,
    check_cell_states,
    check_choice,
    check_columns_listed,
    check_emb_layer,
    check_filter_data,
    check_fraction,
    check_inputs_exist,
    check_model_version,
    check_positive_int,
    state_list,
)
from ._workers import WorkerError, ordered_map

__all__ = [
    "ClassifierDataError", "check_attr_map", "CorpusError", "GeneformerError", "InputError", "InputFileError", "ModelLoadError",
    "OptionError", "PlainDataUnpickler", "QuantizationError", "VocabularyError", "WorkerError", "atomic_folder",
    "atomic_path", "autocast", "json_default", "bf16_supported", "check_cell_states", "check_choice", "check_columns_listed",
    "check_emb_layer", "check_filter_data", "check_fraction", "check_model_version", "check_positive_int",
    "compute_dtype", "cuda_available", "doc_params", "free_memory_bytes", "host_to_device", "hub_offline", "itemsize",
    "load_plain", "model_device", "move_contents", "optional_module", "ordered_map", "progress_bar", "rank", "refuse_existing",
    "forget_hub_probe", "hub_endpoint", "hub_offline_reason", "hub_reachable", "quiet_transformers",
    "resolve_device", "resolve_dtype", "save_dataset", "save_figure", "show_progress", "state_list",
    "temp_path", "torch_threads", "trainer_device_args", "usable_cpus", "world_size", "write_bytes", "write_csv", "write_json", "write_parquet",
    "write_pickle", "write_text", "write_with",
    "Shard", "ShardError", "assign_balanced", "attention_cost", "balanced_bounds", "completed_shards", "fingerprint",
    "mark_shard_done", "parse_shard", "shard_bounds", "shard_done", "shard_part", "shard_record", "shards_dir",
    "barrier", "init_distributed", "local_rank", "model_digest",
    "cgroup_cpu_quota", "limit_cpu_threads",
    "OutputExistsError", "OutputLockedError", "check_inputs_exist", "load_plain_file", "lock_path", "output_lock", "remove_stale_temporaries",
]
