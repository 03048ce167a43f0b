"""Embeddings: the packaged MiniLM loads offline, rows are unit-norm float32, a paraphrase is
closer than an unrelated sentence, and the content-hash cache serves repeated texts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from curate.embeddings import (
    DEFAULT_MODEL,
    embed_texts,
    load_model,
    model_identity,
    packaged_model_path,
    resolve_model,
)
from curate.errors import OperatorError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> SentenceTransformer:
    return load_model()


def test_default_model_is_the_packaged_minilm(model: SentenceTransformer) -> None:
    assert resolve_model(DEFAULT_MODEL) == packaged_model_path()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == packaged_model_path()
    assert load_model() is model  # loaded once per process
    assert (packaged_model_path() / "model.safetensors").is_file()


def test_paraphrase_is_closer_than_unrelated(model: SentenceTransformer) -> None:
    texts = [
        "Natalia sold clips to 48 of her friends in April.",
        "In April, Natalia sold clips to forty-eight friends.",
        "The mitochondria is the powerhouse of the cell.",
    ]
    emb, stats = embed_texts(texts)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > 0.8 > 0.2 > unrelated
    assert (stats.rows, stats.distinct, stats.computed, stats.from_cache) == (3, 3, 3, 0)
    # the same vectors as calling the model directly
    direct = model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    assert np.allclose(emb, direct, atol=1e-5)


def test_null_empty_repeated_and_non_ascii(model: SentenceTransformer) -> None:
    texts = [None, "", "Ünïcödé 数学 problem", "Ünïcödé 数学 problem"]
    emb, stats = embed_texts(texts)
    assert np.array_equal(emb[0], emb[1])  # null is embedded as the empty text
    assert np.array_equal(emb[2], emb[3])
    assert (stats.distinct, stats.computed) == (2, 2)
    empty, none = embed_texts([])
    assert empty.shape == (0, 384) and none.rows == 0


def test_second_call_reads_the_cache(tmp_path: Path, model: SentenceTransformer) -> None:
    first, stats1 = embed_texts(["alpha beta", "gamma"], cache_dir=tmp_path)
    second, stats2 = embed_texts(["gamma", "alpha beta", "delta"], cache_dir=tmp_path)
    assert (stats1.computed, stats1.from_cache) == (2, 0)
    assert (stats2.computed, stats2.from_cache) == (1, 2)
    assert np.array_equal(second[0], first[1]) and np.array_equal(second[1], first[0])
    [folder] = tmp_path.glob("embedding-*")
    settings = (folder / "settings.json").read_text()
    assert model_identity(packaged_model_path()) in settings and '"l2"' in settings


def test_local_folder_relative_to_base_dir(tmp_path: Path, model: SentenceTransformer) -> None:
    folder = packaged_model_path()
    assert resolve_model(folder.name, base_dir=folder.parent) == folder
    assert load_model(str(folder)) is model  # same folder, same loaded model
    emb, _ = embed_texts(["same text"], model=str(folder))
    default, _ = embed_texts(["same text"])
    assert np.array_equal(emb, default)


def test_missing_model_is_a_clear_error_not_a_download(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match="never downloads models") as info:
        resolve_model("nobody-has/this-model-xyz", base_dir=tmp_path)
    assert "nobody-has/this-model-xyz" in str(info.value)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"0")
    with pytest.raises(OperatorError, match="is a file; expected a model folder"):
        resolve_model("weights.bin", base_dir=tmp_path)


def test_identity_follows_file_contents(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    before = model_identity(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert model_identity(tmp_path) != before


def test_missing_sentence_transformers_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['sentence_transformers'] = None\n"
        "from curate.embeddings import load_model\n"
        "from curate.errors import MissingDependencyError\n"
        "try:\n    load_model()\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "sentence-transformers" in out
    assert "pip install 'curate[semantic]'" in out
