"""The shared infrastructure: settings, one validation rule per argument, atomic writers, the worker pool."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import geneformer as gf
from geneformer._utils import (
    OptionError,
    atomic_folder,
    check_cell_states,
    compute_dtype,
    ordered_map,
    progress_bar,
    refuse_existing,
    resolve_device,
    write_json,
    write_with,
)


# ---- settings ------------------------------------------------------------------------------------
def test_settings_fall_back_to_the_environment_when_read(monkeypatch, tmp_path):
    monkeypatch.setenv("GENEFORMER_DICTS_DIR", str(tmp_path / "dicts"))
    monkeypatch.setenv("GENEFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert gf.settings.dicts_dir == tmp_path / "dicts"
    assert gf.settings.cache_dir == tmp_path / "cache"
    assert gf.settings.hub_offline is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert gf.settings.hub_offline is False
    with gf.settings.override(dicts_dir=tmp_path / "mine", hub_offline=True):
        assert gf.settings.dicts_dir == tmp_path / "mine" and gf.settings.hub_offline is True
    assert gf.settings.dicts_dir == tmp_path / "dicts"  # restored: the environment again


def test_settings_are_the_defaults_of_per_call_arguments():
    with gf.settings.override(device="cpu", dtype="bf16"):
        assert resolve_device(None) == torch.device("cpu")
        assert compute_dtype(None) == torch.bfloat16
        assert compute_dtype("fp32") == torch.float32  # a per-call argument wins
    assert compute_dtype(None) is None
    with gf.settings.override(progress=False):
        assert progress_bar(total=3).disable is True
        assert progress_bar(total=3, progress=True).disable is False


def test_settings_refuse_bad_values():
    with pytest.raises(OptionError, match="settings.device"):
        gf.settings.device = "gpu0"
    with pytest.raises(OptionError, match="dtype"):
        gf.settings.dtype = "int8"
    with pytest.raises(OptionError, match="settings.n_jobs"):
        gf.settings.n_jobs = 0
    with pytest.raises(OptionError, match="Unknown setting"):
        with gf.settings.override(speed="max"):
            pass
    assert gf.settings.device == "auto" and gf.settings.dtype is None and gf.settings.n_jobs == 1


def test_settings_token_budget_and_dtype_reach_the_forward_loop(mini_v1):
    from geneformer.inference import iter_forward

    cells = [list(range(5, 5 + n)) for n in (60, 50, 40, 30)]
    with gf.settings.override(token_budget=120):  # two 60-wide cells per batch at most
        sizes = [len(b.rows) for b in iter_forward(mini_v1, cells, layer=1, validate=False, progress=False)]
    assert sizes == [2, 2]
    with gf.settings.override(dtype="bf16"):
        (batch,) = iter_forward(mini_v1, cells[:1], layer=1, validate=False, progress=False)
    assert batch.hidden.dtype == torch.bfloat16


# ---- one rule per argument -----------------------------------------------------------------------
def test_emb_layer_means_the_same_everywhere(golden_dir):
    from geneformer import EmbExtractor, GeneformerConfig
    from geneformer.models import layer_index

    messages = []
    for make in (lambda: EmbExtractor(emb_layer=1), lambda: GeneformerConfig(emb_layer=1),
                 lambda: gf.InSilicoPerturber(emb_layer=1, model_version="V1")):
        with pytest.raises(ValueError) as err:
            make()
        messages.append(str(err.value))
    assert len(set(messages)) == 1 and messages[0].startswith("emb_layer=1 is out of range")
    model = gf.load_model(golden_dir / "models" / "mini-V1", device="cpu")
    assert layer_index(model, -3) == 0  # any layer down to the embeddings, for every front end
    assert EmbExtractor(emb_layer=-2).emb_layer == -2


def test_cell_states_are_checked_by_one_rule():
    states = {"state_key": "c", "start_state": "a", "goal_state": "a"}
    messages = []
    for make in (lambda: check_cell_states(states),
                 lambda: gf.InSilicoPerturberStats(mode="goal_state_shift", cell_states_to_model=states,
                                                   model_version="V1")):
        with pytest.raises(ValueError) as err:
            make()
        messages.append(str(err.value))
    assert messages[0] == messages[1] == "cell_states_to_model: start_state and goal_state must differ."
    legacy = check_cell_states({"condition": (["ctrl"], ["stim"], [])})
    assert legacy == {"state_key": "condition", "start_state": "ctrl", "goal_state": "stim", "alt_states": []}


# ---- atomic writing ------------------------------------------------------------------------------
def test_a_failed_write_leaves_neither_the_target_nor_a_temporary(tmp_path):
    target = tmp_path / "out.json"

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_with(target, boom)
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": np.int64(3), "b": np.arange(2)})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"a":3,"b":[0,1]}'
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("1")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_an_existing_output_is_refused_naming_the_flag(tmp_path):
    (tmp_path / "x").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        refuse_existing(tmp_path / "x", overwrite=False)
    assert refuse_existing(tmp_path / "x", overwrite=True) == tmp_path / "x"


# ---- worker pool ---------------------------------------------------------------------------------
def _square_after(pair):
    import time

    delay, value = pair
    time.sleep(delay)
    return value * value, os.getpid()


def test_ordered_map_keeps_task_order_across_workers():
    tasks = [(0.05 * (5 - i), i) for i in range(6)]  # later tasks finish first
    out = list(ordered_map(_square_after, tasks, nproc=2, window=4))
    assert [v for v, _ in out] == [i * i for i in range(6)]
    assert len({pid for _, pid in out}) == 2 and os.getpid() not in {pid for _, pid in out}


# ---- restricted unpickler, stale temporaries, output lock ------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_restricted_unpickler_rebuilds_tensors_and_refuses_code(tmp_path):
    import pickle

    from geneformer._utils import InputFileError, load_plain_file
    from geneformer.embeddings import load_state_embs, save_state_embs

    embs = {"ctrl": torch.randn(4), "stim": torch.arange(6.0).reshape(2, 3)[:, 1]}  # a strided view too
    p = tmp_path / "states.pkl"
    save_state_embs(embs, p)  # the reference's pickle of tensors
    back = load_state_embs(p)
    assert list(back) == ["ctrl", "stim"] and all(torch.equal(back[k], embs[k]) for k in embs)
    save_state_embs(embs, tmp_path / "states.safetensors")
    assert torch.equal(load_state_embs(tmp_path / "states.safetensors")["stim"], embs["stim"])

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"ctrl": _RunsCode(marker)}))
    with pytest.raises(InputFileError, match=r"evil.pkl.*refusing to load posix.system"):
        load_state_embs(evil)
    plain = tmp_path / "tensor.pkl"
    plain.write_bytes(pickle.dumps(torch.zeros(2)))
    assert torch.equal(load_plain_file(plain), torch.zeros(2))
    # code hidden inside a tensor's storage bytes is refused by torch's own restricted loader
    from torch.storage import _load_from_bytes

    class Sneaky:
        def __reduce__(self):
            import io

            buf = io.BytesIO()
            torch.save(_RunsCode(marker), buf)
            return (_load_from_bytes, (buf.getvalue(),))

    sneaky = tmp_path / "sneaky.pkl"
    sneaky.write_bytes(pickle.dumps({"ctrl": Sneaky()}))
    with pytest.raises(InputFileError, match="sneaky.pkl"):
        load_state_embs(sneaky)
    assert not marker.exists()


def test_temporaries_of_dead_processes_are_removed_by_the_next_writer(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_file = tmp_path / f".out.json.tmp-{dead.pid}.json"
    stale_dir = tmp_path / f".out.dataset.tmp-{dead.pid}"
    live = tmp_path / f".out.json.tmp-{os.getppid()}.json"  # a live process's work is left alone
    stale_file.write_text("half")
    stale_dir.mkdir()
    live.write_text("busy")
    write_json(tmp_path / "out.json", {"a": 1})
    assert not stale_file.exists() and live.exists()
    with atomic_folder(tmp_path / "out.dataset") as work:
        (work / "x").write_text("1")
    assert not stale_dir.exists() and (tmp_path / "out.dataset" / "x").is_file()


def test_an_output_being_written_is_locked(tmp_path):
    from geneformer._utils import OutputLockedError, lock_path, output_lock

    target = tmp_path / "cells.dataset"
    with output_lock(target, "tokenize run"):
        with pytest.raises(OutputLockedError, match=rf"cells.dataset is being written by another tokenize run "
                                                    rf"\(process {os.getpid()}"):
            with output_lock(target, "tokenize run"):
                pass
    assert not lock_path(target).exists()
    with output_lock(target):  # released: free again
        pass
