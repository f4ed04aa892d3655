"""Gene vocabularies: published pickles, safe JSON form, resolution order."""

import pickle

import numpy as np
import pytest

from geneformer._utils import VocabularyError
from geneformer.vocab import GeneVocab, load_dict_file, resolve_dict_file


def test_published_v1(vocab_v1):
    assert vocab_v1.size == 25426 and len(vocab_v1.genes) == 25424
    assert vocab_v1.pad_id == 0 and vocab_v1.mask_id == 1
    assert not vocab_v1.has_cls_eos and vocab_v1.cls_id is None
    assert vocab_v1.token_dtype == "int16"
    assert all(isinstance(v, int) for v in list(vocab_v1.token_dict.values())[:10])


def test_published_v2(vocab_v2):
    assert vocab_v2.size == 20275
    assert (vocab_v2.pad_id, vocab_v2.mask_id, vocab_v2.cls_id, vocab_v2.eos_id) == (0, 1, 2, 3)
    assert vocab_v2.special_tokens == ["<pad>", "<mask>", "<cls>", "<eos>"]
    assert vocab_v2.genes == sorted(vocab_v2.genes)
    assert vocab_v2.token_dtype == "int32"
    assert len(vocab_v2.gene_medians) == 42005


def test_symbol_and_mapping_lookup(vocab_v2):
    ens = vocab_v2.symbols_to_ensembl(["CD3E", "cd3e", "NOT_A_GENE"])
    assert ens[0] == ens[1] == "ENSG00000198851" and ens[2] == ""
    assert vocab_v2.tokens_for(["CD3E"]) == [vocab_v2.token_dict["ENSG00000198851"]]
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        vocab_v2.tokens_for(["CD3E", "NOT_A_GENE"])


def test_json_round_trip(vocab_v1, tmp_path):
    vocab_v1.save(tmp_path / "v", format="json")
    again = GeneVocab.from_dir(tmp_path / "v")
    assert again.token_dict == vocab_v1.token_dict
    assert again.gene_medians == vocab_v1.gene_medians
    assert again.version == "V1"
    vocab_v1.save(tmp_path / "p", format="pickle")
    assert GeneVocab.from_dir(tmp_path / "p").token_dict == vocab_v1.token_dict


def test_resolution_order(dicts_dir, tmp_path, monkeypatch):
    explicit = dicts_dir / "V2" / "token_dictionary_gc104M.pkl"
    assert resolve_dict_file("token_dictionary", "V2", explicit) == explicit
    # GENEFORMER_DICTS_DIR (set by conftest) beats the cache
    assert resolve_dict_file("token_dictionary", "V1").parent == dicts_dir / "V1"
    # the cache is used when the env folder does not have the file
    monkeypatch.setenv("GENEFORMER_DICTS_DIR", str(tmp_path / "empty"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("GENEFORMER_CACHE", str(cache))
    (cache / "dicts" / "V1").mkdir(parents=True)
    target = cache / "dicts" / "V1" / "token_dictionary_gc30M.pkl"
    target.write_bytes((dicts_dir / "V1" / "token_dictionary_gc30M.pkl").read_bytes())
    assert resolve_dict_file("token_dictionary", "V1") == target
    # nothing local and the hub unreachable: a clear error naming what to do
    with pytest.raises(VocabularyError, match="GENEFORMER_DICTS_DIR"):
        resolve_dict_file("gene_median", "V1")


def test_missing_explicit_file(tmp_path):
    with pytest.raises(VocabularyError, match="does not exist"):
        resolve_dict_file("token_dictionary", "V2", tmp_path / "nope.pkl")


def test_safe_unpickler_refuses_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("boom",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(VocabularyError, match="refusing"):
        load_dict_file(p)


def test_numpy_scalars_in_pickles_are_allowed(tmp_path):
    p = tmp_path / "tok.pkl"
    p.write_bytes(pickle.dumps({"<pad>": 0, "<mask>": 1, "ENSG1": np.int16(2)}))
    assert load_dict_file(p)["ENSG1"] == 2


def test_medians_must_cover_vocabulary():
    with pytest.raises(VocabularyError, match="no median"):
        GeneVocab({"<pad>": 0, "<mask>": 1, "G1": 2}, {})


def test_invalid_version():
    with pytest.raises(ValueError, match="V1' or 'V2"):
        GeneVocab.load("V3")


def test_a_named_gene_mapping_file_must_be_readable(tmp_path):
    """Only the published dictionaries' absence is a warning: a file the user names is an error."""
    bad = tmp_path / "mapping.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(VocabularyError, match="mapping.pkl"):
        GeneVocab.load("V2", gene_mapping_file=bad)
    with pytest.raises(VocabularyError, match="missing.json"):
        GeneVocab.load("V2", gene_name_id_file=tmp_path / "missing.json")


def test_mouse_style_symbols_are_warned_about(caplog):
    v = GeneVocab.load("V2")
    with caplog.at_level("WARNING", logger="geneformer.vocab._vocab"):
        v.symbols_to_ensembl(["CD3E", "LYZ", "MS4A1", "C1orf112"] * 5)
        assert "not upper case" not in caplog.text
        ids = v.symbols_to_ensembl(["Cd3e", "Lyz2", "Ms4a1", "Cd19", "Gapdh", "Actb"] * 3)
    assert "18 of 18 gene symbols are not upper case (e.g. 'Cd3e')" in caplog.text
    assert ids[0] == v.symbols_to_ensembl(["CD3E"])[0] != ""  # still matched, but no longer silently


def test_published_dictionaries_converted_to_json_replace_the_pickles(tmp_path, monkeypatch):
    """`geneformer convert-dict` once; afterwards the vocabulary loads from JSON, nothing is unpickled."""
    import shutil

    from typer.testing import CliRunner

    from geneformer.cli.main import app

    original = GeneVocab.load("V2")
    folder = tmp_path / "dicts" / "V2"
    folder.mkdir(parents=True)
    from geneformer.vocab import DICT_FILES

    for kind, name in DICT_FILES["V2"].items():
        shutil.copy(resolve_dict_file(kind, "V2"), folder / name)
        res = CliRunner().invoke(app, ["convert-dict", str(folder / name)])
        assert res.exit_code == 0, res.output
        (folder / name).unlink()
    monkeypatch.setenv("GENEFORMER_DICTS_DIR", str(tmp_path / "dicts"))
    assert resolve_dict_file("token_dictionary", "V2").suffix == ".json"
    again = GeneVocab.load("V2")
    assert again.token_dict == original.token_dict and again.gene_medians == original.gene_medians
    assert again.gene_name_id == original.gene_name_id and again.ensembl_mapping == original.ensembl_mapping
