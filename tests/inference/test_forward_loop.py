"""The shared forward loop: layer stops, batching, padding, dtype, validation of the cells, OOM split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneformer.models import (
    load_model,
)


@pytest.fixture(scope="module")
def pbmc_v1(golden_dir):
    import datasets

    return datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))


@pytest.fixture(scope="module")
def pbmc_v2(golden_dir):
    import datasets

    return datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V2.dataset"))


# ---- the forward pass ---------------------------------------------------------------------------
def test_forward_hidden_matches_transformers(mini_v1, pbmc_v1):
    from geneformer.data import as_sequences
    from geneformer.inference import collate, forward_hidden

    seqs = as_sequences(pbmc_v1)
    rows = np.argsort(seqs.lengths)[:6]  # the shortest cells keep the test fast
    ids, mask, _ = collate(seqs, rows)
    real = mask.bool()
    with torch.inference_mode():
        ref = mini_v1(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for layer in range(4):
            h, _ = forward_hidden(mini_v1, ids, mask, layer)
            assert torch.allclose(h[real], ref[layer][real], atol=1e-5)


def test_forward_hidden_eager_model(golden_dir, pbmc_v1):
    from geneformer.data import as_sequences
    from geneformer.inference import collate, forward_hidden

    eager = load_model(golden_dir / "models" / "mini-V1", attn_implementation="eager")
    seqs = as_sequences(pbmc_v1)
    ids, mask, _ = collate(seqs, np.argsort(seqs.lengths)[:4])
    with torch.inference_mode():
        ref = eager(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        h, atts = forward_hidden(eager, ids, mask, 2, attention_layers=[1, 3])
    real = mask.bool()
    assert torch.allclose(h[real], ref.hidden_states[2][real], atol=1e-5)
    for layer in (1, 3):
        # compare attention rows of real query positions over real keys
        a, r = atts[layer], ref.attentions[layer - 1]
        for b in range(4):
            n = int(mask[b].sum())
            assert torch.allclose(a[b, :, :n, :n], r[b, :, :n, :n], atol=1e-5)


def test_make_batches():
    from geneformer.inference import make_batches

    lengths = np.array([5, 100, 30, 30, 7, 64, 1, 100])
    fixed = make_batches(lengths, batch_size=3)
    assert [len(b) for b in fixed] == [3, 3, 2]
    assert list(lengths[np.concatenate(fixed)]) == sorted(lengths, reverse=True)
    budget = make_batches(lengths, token_budget=200)
    seen = np.concatenate(budget)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in budget:
        assert len(b) * lengths[b].max() <= 200 or len(b) == 1
    # equal lengths keep their input order (stable)
    assert [int(i) for i in np.concatenate(fixed) if lengths[i] == 30] == [2, 3]


def test_iter_forward_rows_cover_input(mini_v1, pbmc_v1):
    from geneformer.inference import iter_forward

    data = pbmc_v1.select(range(12))
    seen = []
    for batch in iter_forward(mini_v1, data, layer=1, batch_size=5, progress=False):
        assert batch.hidden.shape[:2] == batch.input_ids.shape
        assert batch.input_ids.shape[1] == int(batch.lengths.max())  # padded only to the batch's own max
        seen.extend(batch.rows.tolist())
    assert sorted(seen) == list(range(12))


def test_bf16_autocast_close(mini_v1, pbmc_v1):
    from geneformer.embeddings import cell_embeddings

    data = pbmc_v1.select(range(4))
    fp32 = cell_embeddings(mini_v1, data, batch_size=4, progress=False)
    bf16 = cell_embeddings(mini_v1, data, batch_size=4, amp_dtype="bf16", progress=False)
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert (1 - cos).max() < 1e-2


# ---- bad input ----------------------------------------------------------------------------------
def test_v2_data_with_v1_model(mini_v1, pbmc_v2):
    from geneformer._utils import InputError
    from geneformer.data import as_sequences
    from geneformer.inference import validate_sequences

    with pytest.raises(InputError, match="V2 vocabulary"):
        validate_sequences(as_sequences(pbmc_v2.select(range(10))), mini_v1)


def test_token_ids_beyond_vocab(mini_v2, pbmc_v1):
    from geneformer._utils import InputError
    from geneformer.data import as_sequences
    from geneformer.inference import validate_sequences

    big = [[4, 5, 25000]]
    with pytest.raises(InputError, match="V1"):
        validate_sequences(as_sequences(big), mini_v2)


def test_too_long_and_empty(mini_v1):
    from geneformer._utils import InputError
    from geneformer.data import as_sequences
    from geneformer.inference import validate_sequences

    with pytest.raises(InputError, match="model_input_size=2048"):
        validate_sequences(as_sequences([list(range(10, 2100))]), mini_v1)
    with pytest.raises(InputError, match="no cells"):
        validate_sequences(as_sequences([]), mini_v1)
    with pytest.raises(InputError, match="empty"):
        validate_sequences(as_sequences([[5, 6], []]), mini_v1)


def test_out_of_memory_batches_are_split(mini_v1, pbmc_v1, monkeypatch):
    import geneformer.inference._loop as inf

    real = inf.forward_hidden
    sizes, done = [], []

    def flaky(model, input_ids, *a, **kw):
        sizes.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        done.append(input_ids.shape[0])
        return real(model, input_ids, *a, **kw)

    monkeypatch.setattr(inf, "forward_hidden", flaky)
    data = pbmc_v1.select(range(5))
    rows = [r for b in inf.iter_forward(mini_v1, data, layer=1, batch_size=5, progress=False) for r in b.rows]
    assert sorted(rows) == list(range(5))
    assert sizes[0] == 5 and max(done) <= 2 and sum(done) == 5
