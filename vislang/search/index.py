"""`Index`: the FAISS index over a trained model's image embeddings, and its folder on disk.

One FAISS index per kind of item (rooms, products): a search for one kind is then exact in what
it returns (no over-fetching and filtering), each kind gets the index its size calls for, and a
search over every kind merges the per-kind answers by score (all scores are cosines in the same
space). A FAISS label is the row of the kind's records list.

The stored vectors are the model's image embeddings as they are, and a query is ranked by its
cosine with them: the embeddings are the product. The opt-in re-ranker (`search(reranker=True)`,
vislang/ranking/) re-scores each kind's `RERANK_CANDIDATES` best hits at query time, reading the
index's training items (records with split `train`: their stored embeddings, and their captions
encoded on first use), as `vislang eval --reranker` reads the catalog's.

The folder holds:
  manifest.json               format, version, model fingerprint and checkpoint, dimension,
                              metric, count, requested factory, and per kind: count, factory,
                              tuned search parameters and recall, file names, sizes and sha256
  <n>-<kind>.<generation>.faiss   the CPU index (faiss.write_index)
  <n>-<kind>.<generation>.jsonl   one record per vector, in label order
Each save writes a new generation of data files, then replaces manifest.json (the commit point)
and only then deletes the previous generation: a reader sees the old index or the new one, never
a mix, and an interrupted save leaves the old one intact.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..api import VisLang, encode_readable_images, load
from ..data.catalog import Catalog, Item
from ..data.images import ImageLike, SkipCounter
from ..ranking import Bank, Reranker
from ..ranking.room_category import ROOM_KIND
from .device import set_search_params, single_query_threads, to_cpu, to_gpu, want_gpu
from .errors import IndexFormatError, IndexMismatchError, QueryError, SearchError
from .factory import (
    Queries,
    Tuning,
    add_in_chunks,
    build_faiss_index,
    resolve_factory,
    tune,
    tuning_parameter,
)
from ..atomic import write_atomic, write_text_atomic
from .files import model_fingerprint, sha256_file
from .hits import Hit, Record, record_of
from .query import DEFAULT_TEXT_WEIGHT, as_images, as_texts, check_query, query_vectors
from .query import rerank as rerank_hits

# 5: the stored vectors are the embeddings alone (2-4 carried ranking terms in extra coordinates)
FORMAT, VERSION = "vislang-index", 5
MANIFEST = "manifest.json"
METRIC_NAME = "inner_product"
TUNING_QUERIES = 1000  # per query set: enough for the margin of two standard errors to stay under 1%
KIND_ALIASES = {"rooms": "room", "products": "product", "images": "image"}
# per kind and query: the FAISS hits the re-ranker re-scores. On IKEA the top 10 of 97% of the val
# and test product captions are then those of re-ranking all 2292 products (92% with 100)
RERANK_CANDIDATES = 200


def parse_kinds(kinds: str | Sequence[str] | None) -> list[str] | None:
    """"rooms,products" or ["room", "product"] -> ["room", "product"]; None means every kind."""
    if kinds is None:
        return None
    names = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    out = [KIND_ALIASES.get(name.strip().lower(), name.strip().lower()) for name in names if name.strip()]
    return list(dict.fromkeys(out)) or None


@dataclass
class _Part:
    """The index and records of one kind of item."""

    kind: str
    factory: str
    index: faiss.Index  # on the CPU: what is saved
    records: list[Record]
    tuning: Tuning = field(default_factory=Tuning)
    searcher: faiss.Index | None = None  # the index where it is searched: a GPU copy, or itself

    def place(self, gpu: bool) -> None:
        self.searcher = to_gpu(self.index) if gpu else self.index
        set_search_params(self.searcher, self.tuning.params)

    @cached_property
    def labels(self) -> dict[str, int]:
        """Each item id -> its row (its FAISS label)."""
        return {record["id"]: label for label, record in enumerate(self.records)}

    def rows(self, labels: Sequence[int]) -> np.ndarray:
        """The vectors stored at rows `labels`, decoded from the CPU index (exact for Flat, IVF-Flat
        and HNSW; SQ8 decodes them as approximately as it searches)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()  # an IVF finds a row by its id only through this map
        return self.index.reconstruct_batch(np.asarray(labels, dtype=np.int64))

    def add(self, vectors: np.ndarray, records: list[Record]) -> None:
        add_in_chunks(self.searcher, vectors)  # on the GPU when the index is there (IVF assignment is the cost)
        if self.searcher is not self.index:
            self.index = to_cpu(self.searcher)  # the saved copy follows
        self.records += records
        self.__dict__.pop("labels", None)


class Index:
    """Search a catalog's images by text, by photo, or by both.

    >>> index = Index.build("runs/demo", read_catalog(find_data_dir()))
    >>> index.save("runs/index")
    >>> Index.load("runs/index").search(texts="a bright scandinavian kitchen", kind="room", k=5)
    """

    def __init__(self, parts: dict[str, _Part], dimension: int, fingerprint: str, checkpoint: Path,
                 factory: str = "auto", target_recall: float = 0.95, gpu: bool | None = None,
                 model: VisLang | None = None) -> None:
        self.parts, self.dimension, self.fingerprint = parts, dimension, fingerprint
        self.checkpoint, self.factory, self.target_recall = Path(checkpoint), factory, target_recall
        self.gpu = want_gpu(gpu)
        self._model = model
        for part in parts.values():
            part.place(self.gpu)

    # ------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        model: VisLang | str | Path,
        items: Catalog | Iterable[Item],
        kinds: str | Sequence[str] | None = None,
        factory: str = "auto",
        target_recall: float = 0.95,
        batch_size: int = 64,
        gpu: bool | None = None,
        progress: bool = True,
    ) -> Index:
        """Embed every image of the chosen kinds and index each kind with `factory` ("auto": see factory.py)."""
        model = model if isinstance(model, VisLang) else load(model)
        checkpoint = _checkpoint_of(model).resolve()  # absolute: the index is used from other folders
        items = _select(items, parse_kinds(kinds))
        index = cls({}, model.model.cfg["embed_dim"], model_fingerprint(checkpoint), checkpoint, factory,
                    target_recall, gpu, model)
        for kind in dict.fromkeys(item.kind for item in items):  # a factory that cannot work fails before embedding
            resolve_factory(factory, sum(item.kind == kind for item in items), index.dimension, f"the {kind} collection")
        if index._add_items(items, batch_size, progress) == 0:
            raise SearchError(f"nothing to index: no images of kind {kinds or 'any'} could be read")
        return index

    def add(self, items: Catalog | Iterable[Item], kinds: str | Sequence[str] | None = None, batch_size: int = 64,
            progress: bool = True) -> int:
        """Embed and add the items not already in the index (by kind and id); returns how many were added.

        An IVF keeps the lists it was trained with and its tuned nprobe; after the collection has
        grown several-fold, a rebuild re-chooses the index for the new size.
        """
        items, wanted = list(items), parse_kinds(kinds)
        selected = _select(items, wanted)
        if wanted and items and not selected:
            have = ", ".join(sorted({item.kind for item in items}))
            raise SearchError(f"nothing to add: no items of kind {', '.join(wanted)} (the items are of kind {have})")
        return self._add_items(selected, batch_size, progress)

    def _add_items(self, items: list[Item], batch_size: int, progress: bool) -> int:
        new = [item for item in items if item.id not in self._ids(item.kind)]
        new = list({(item.kind, item.id): item for item in new}.values())  # a catalog may list an id twice
        if not new:
            return 0
        vectors, kept, failed = encode_readable_images(self.model, [item.image for item in new], batch_size, progress)
        SkipCounter(list(failed.values())).warn("images")
        new = [new[i] for i in kept]
        for kind in dict.fromkeys(item.kind for item in new):
            rows = [i for i, item in enumerate(new) if item.kind == kind]
            records = [record_of(new[i]) for i in rows]
            if kind in self.parts:
                self.parts[kind].add(vectors[rows], records)
            else:
                self._new_part(kind, vectors[rows], records, [new[i].caption for i in rows], progress)
        self.__dict__.pop("reranker", None)  # its banks are the indexed training items
        return len(new)

    def embeddings(self, kind: str, labels: Sequence[int]) -> np.ndarray:
        """The image embeddings [N, D] stored for `kind` at rows `labels`."""
        return self.parts[kind].rows(labels)

    @cached_property
    def reranker(self) -> Reranker:
        """The re-ranker (vislang/ranking/) whose banks are the indexed training items of each kind:
        their stored embeddings, their captions (encoded here, once) and a room's category (its
        record's type). Items added later join it: `add` drops it."""
        banks = {}
        for kind, part in self.parts.items():
            labels = [label for label, record in enumerate(part.records) if record.get("split") == "train"]
            if not labels:
                continue
            records = [part.records[label] for label in labels]
            banks[kind] = Bank(self.embeddings(kind, labels), self.model.encode_texts([r["caption"] for r in records]),
                               tuple(r["image"] for r in records),
                               tuple(r.get("type") for r in records) if kind == ROOM_KIND else ())
        return Reranker(banks)

    def _new_part(self, kind: str, vectors: np.ndarray, records: list[Record], captions: list[str], progress: bool) -> None:
        factory = resolve_factory(self.factory, len(vectors), self.dimension, f"the {kind} collection")
        index = build_faiss_index(vectors, factory, gpu=self.gpu, progress=progress)
        part = self.parts[kind] = _Part(kind, factory, index, records)
        part.place(self.gpu)
        if tuning_parameter(factory):
            part.tuning = tune(part.searcher, vectors, factory, self._tuning_queries(vectors, captions), self.target_recall)

    def _tuning_queries(self, embeddings: np.ndarray, captions: list[str]) -> list[Queries]:
        """Photo queries (the items' own photos, each leaving itself out) and text queries (the
        items' captions): the two kinds of query the index will answer, each held to the recall target."""
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(embeddings), min(TUNING_QUERIES, len(embeddings)), replace=False))
        texts = [captions[i] for i in rng.choice(len(captions), min(TUNING_QUERIES, len(captions)), replace=False)]
        return [Queries("photo", embeddings[rows], own=rows), Queries("text", self.model.encode_texts(texts))]

    # ------------------------------------------------------------ the model

    @property
    def model(self) -> VisLang:
        """The model that made the index, loaded from its checkpoint on first use."""
        if self._model is None:
            self._model = self._checked(load(self.checkpoint))
        return self._model

    def use_model(self, model: VisLang | str | Path) -> None:
        """Search or add with this model (a checkpoint moved, or another device); refused unless it
        is the one the index was built with."""
        self._model = self._checked(model if isinstance(model, VisLang) else load(model))

    def _checked(self, model: VisLang) -> VisLang:
        dim = model.model.cfg["embed_dim"]
        if dim != self.dimension:
            raise IndexMismatchError(f"the index holds {self.dimension}-d vectors but {model.checkpoint} makes {dim}-d "
                                     "embeddings: build a new index with this checkpoint")
        fingerprint = model_fingerprint(_checkpoint_of(model))
        if fingerprint != self.fingerprint:
            raise IndexMismatchError(f"the index was built by another checkpoint ({self.checkpoint}, {self.fingerprint[:19]}); "
                                     f"{model.checkpoint} is {fingerprint[:19]}: build a new index with this checkpoint")
        return model

    # ------------------------------------------------------------ searching

    @property
    def kinds(self) -> list[str]:
        return list(self.parts)

    def __len__(self) -> int:
        return sum(len(part.records) for part in self.parts.values())

    def record(self, kind: str, item_id: str) -> Record | None:
        part = self.parts.get(kind)
        label = part.labels.get(item_id) if part else None
        return None if label is None else part.records[label]

    def find(self, item_id: str) -> Record | None:
        """The record of an indexed item by its id alone; an id that two kinds share is the first
        kind's in the index's order."""
        return next(filter(None, (self.record(kind, item_id) for kind in self.parts)), None)

    def _ids(self, kind: str) -> dict[str, int]:
        return self.parts[kind].labels if kind in self.parts else {}

    def check_kind(self, kind: str | None) -> str | None:
        """The index's name for a kind ("rooms" -> "room"), None for every kind; an unknown kind is refused."""
        if kind is None:
            return None
        name = KIND_ALIASES.get(kind, kind)
        if name not in self.parts:
            raise QueryError(f"unknown kind {kind!r}: this index holds {', '.join(self.parts) or 'nothing'}")
        return name

    def _parts_for(self, kind: str | None) -> list[_Part]:
        name = self.check_kind(kind)
        return list(self.parts.values()) if name is None else [self.parts[name]]

    def search(
        self,
        texts: str | Sequence[str] | None = None,
        images: ImageLike | Sequence[ImageLike] | None = None,
        k: int = 10,
        kind: str | None = None,
        rerank: int | None = None,
        text_weight: float = DEFAULT_TEXT_WEIGHT,
        reranker: bool = False,
    ) -> list[list[Hit]]:
        """One list of hits, best first, per query: a text, a photo, or a photo and a text
        (paired one to one). A hit's score is its cosine with the query. `reranker=True` adds the
        re-ranker's terms (vislang/ranking/) to each kind's `RERANK_CANDIDATES` best hits, times
        the query's text share (1 for a text; photo+text: see query.mix), and orders them by that
        score; it needs a text. `rerank=N` then re-scores the top N with the matching head and
        orders them by it (text queries only)."""
        texts, images = as_texts(texts), as_images(images)
        check_query(texts, images, k, rerank, text_weight, reranker)
        self._parts_for(kind)  # an unknown kind fails before the model is loaded
        vectors, text_share = query_vectors(self.model, texts, images, text_weight)
        results = self._search(vectors, max(k, rerank or 0), kind, text_share if reranker else None)
        if rerank:
            results = [rerank_hits(self.model, text, hits, rerank) for text, hits in zip(texts, results)]
        return [hits[:k] for hits in results]

    def similar(self, item_id: str, k: int = 10, kind: str | None = None) -> list[Hit]:
        """"More like this": the k items nearest an indexed item's stored embedding (of `kind`, or
        every kind), the item itself left out. `item_id` is looked up as `find` does."""
        record = self.find(item_id)
        if record is None:
            raise QueryError(f"unknown id {item_id!r}: no item in the index has it")
        check_query([], [record["image"]], k, None, DEFAULT_TEXT_WEIGHT)
        vector = self.embeddings(record["kind"], [self.parts[record["kind"]].labels[item_id]])
        hits = self._search(vector, k + 1, kind)[0]
        return [hit for hit in hits if (hit.kind, hit.id) != (record["kind"], item_id)][:k]

    def search_vectors(self, vectors: np.ndarray, k: int = 10, kind: str | None = None) -> list[list[Hit]]:
        """Search with query vectors already made (unit rows of the model's dimension), by cosine."""
        return self._search(vectors, k, kind)

    def _search(self, vectors: np.ndarray, k: int, kind: str | None,
                rerank_share: np.ndarray | None = None) -> list[list[Hit]]:
        """The k best hits of each query over the kinds searched, merged by score; with `rerank_share`
        (each query's text share) each kind's hits are first re-scored by the re-ranker."""
        vectors = np.atleast_2d(vectors)
        if vectors.shape[1] != self.dimension:
            raise IndexMismatchError(f"query vectors are {vectors.shape[1]}-d, the index holds {self.dimension}-d vectors")
        results: list[list[Hit]] = [[] for _ in vectors]
        for part in self._parts_for(kind):
            wanted = min(k if rerank_share is None else max(k, RERANK_CANDIDATES), len(part.records))
            if wanted == 0:
                continue
            with single_query_threads(len(vectors)):
                scores, labels = part.searcher.search(np.ascontiguousarray(vectors, dtype=np.float32), wanted)
            for q, (hits, row_scores, row_labels) in enumerate(zip(results, scores, labels)):
                found = row_labels >= 0
                row_scores, row_labels = row_scores[found], row_labels[found]
                if rerank_share is not None:
                    row_scores = row_scores + rerank_share[q] * self.reranker.text_to_image_terms(
                        vectors[q : q + 1], self.embeddings(part.kind, row_labels), part.kind,
                        image_keys=[part.records[label]["image"] for label in row_labels])[0]
                hits += [Hit.from_record(part.records[label], score) for score, label in zip(row_scores, row_labels)]
        # kinds are searched separately; their scores are cosines (plus the same terms), so merge by score
        return [sorted(hits, key=lambda hit: -hit.score)[:k] for hits in results]

    def goes_with(self, query: str | ImageLike, k: int = 10, rooms: int = 10, neighbours: int = 50):
        """Products that go with a product (its id, or a photo): see goes_with.py."""
        from .goes_with import goes_with

        return goes_with(self, query, k=k, rooms=rooms, neighbours=neighbours)

    # ------------------------------------------------------------ disk

    def summary(self) -> str:
        """One line: how many images of each kind, in which index, with which tuned parameters."""
        parts = []
        for kind, part in self.parts.items():
            tuned = [f"{name}={value}" for name, value in part.tuning.params.items()]
            tuned += [f"recall@10 {name} {value:.3f}" for name, value in part.tuning.recall.items()]
            parts.append(f"{kind} {len(part.records)} ({', '.join([part.factory, *tuned])})")
        where = "GPU" if self.gpu else "CPU"
        return f"{len(self)} images, {self.dimension}-d, on the {where}: " + "; ".join(parts)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the index folder (see the module docstring); an existing index is replaced only
        with `overwrite` (`add` saves with it: the index it replaces is its own earlier state)."""
        path = Path(path)
        old: dict[str, Any] | None = None
        check_writable(path, overwrite)
        if (path / MANIFEST).is_file():
            try:
                old = _read_manifest(path)
            except IndexFormatError:
                old = None  # a corrupt index being replaced: nothing of it to keep or clean up
        generation = int(old.get("generation", 0)) + 1 if old else 1
        path.mkdir(parents=True, exist_ok=True)
        parts = {}
        for number, (kind, part) in enumerate(self.parts.items()):
            stem = f"{number}-{re.sub(r'[^A-Za-z0-9_-]', '_', kind)}.{generation}"
            index_file, records_file = f"{stem}.faiss", f"{stem}.jsonl"
            write_atomic(path / index_file, lambda tmp, index=part.index: faiss.write_index(index, str(tmp)), "index")
            lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in part.records)
            write_text_atomic(path / records_file, lines, "index")
            parts[kind] = {
                "count": len(part.records), "factory": part.factory, "params": part.tuning.params,
                "tuned_recall_at_10": part.tuning.recall or None,
                "files": {name: _file_entry(path / name) for name in (index_file, records_file)},
                "index_file": index_file, "records_file": records_file,
            }
        manifest = {
            "format": FORMAT, "version": VERSION, "generation": generation,
            "model": {"fingerprint": self.fingerprint, "checkpoint": str(self.checkpoint)},
            "dimension": self.dimension, "metric": METRIC_NAME, "count": len(self),
            "factory": self.factory, "target_recall": self.target_recall, "parts": parts,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = json.dumps(manifest, indent=2) + "\n"
        write_text_atomic(path / MANIFEST, text, "manifest")  # the commit point
        for entry in (old or {}).get("parts", {}).values():
            for name in entry.get("files", {}):
                if name not in {n for p in parts.values() for n in p["files"]}:
                    (path / name).unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path, model: VisLang | str | Path | None = None, gpu: bool | None = None) -> Index:
        """Read an index folder, checking every file against the manifest; with `model`, also
        check that it is the model the index was built with (else it is loaded on first query)."""
        path = Path(path)
        manifest = _read_manifest(path)
        try:
            dimension = int(manifest["dimension"])
            fingerprint, checkpoint = str(manifest["model"]["fingerprint"]), Path(manifest["model"]["checkpoint"])
            factory, target = str(manifest.get("factory", "auto")), float(manifest.get("target_recall", 0.95))
            parts = {str(kind): _load_part(path, str(kind), entry, dimension) for kind, entry in manifest["parts"].items()}
        except SearchError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise IndexFormatError(f"corrupt index at {path}: {MANIFEST} lacks or mangles {err}") from None
        index = cls(parts, dimension, fingerprint, checkpoint, factory, target, gpu)
        if model is not None:
            index.use_model(model)
        return index


def open_index(path: str | Path, checkpoint: str | Path | None = None, device: str | None = None) -> Index:
    """The index at `path`, with the model of `checkpoint` or on `device` when given (checked to
    be the index's own model: `Index.use_model`), else its own checkpoint, loaded when first needed."""
    index = Index.load(path)
    if checkpoint or device:
        index.use_model(load(checkpoint or index.checkpoint, device=device))
    return index


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, that holds another format's manifest.json (a shard folder:
    --overwrite would destroy it), or that holds an index when `overwrite` is not given."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not an index folder: choose another --output")
    if not (path / MANIFEST).is_file():
        return
    try:
        foreign = json.loads((path / MANIFEST).read_text()).get("format") != FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError):
        foreign = False  # unreadable: a damaged index of ours, which --overwrite may replace
    if foreign:
        raise FileExistsError(f"{path} holds a {MANIFEST} that is not a vislang index's (a shard folder?): choose another --output")
    if not overwrite:
        raise FileExistsError(f"{path} already holds an index: pass --overwrite to replace it, or use `vislang index add`")


def _checkpoint_of(model: VisLang) -> Path:
    if model.checkpoint is None:
        raise SearchError("the model must be loaded from a checkpoint folder, so that the index can record which one")
    return Path(model.checkpoint)


def _select(items: Catalog | Iterable[Item], kinds: list[str] | None) -> list[Item]:
    return [item for item in items if kinds is None or item.kind in kinds]


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
        raise IndexFormatError(f"no index at {path}: the folder {what} (make one with `vislang index build`)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"corrupt index at {path}: {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"not a vislang index: {file}")
    if manifest.get("version") != VERSION:
        raise IndexFormatError(f"{path} is a version {manifest.get('version')} index; this vislang reads version "
                               f"{VERSION} (whose vectors are the model's embeddings alone): rebuild it with "
                               "`vislang index build`")
    if manifest.get("metric") != METRIC_NAME:
        raise IndexFormatError(f"{path} uses the metric {manifest.get('metric')!r}; vislang searches by {METRIC_NAME}")
    return manifest


def _load_part(path: Path, kind: str, entry: dict[str, Any], dimension: int) -> _Part:
    for name, expected in entry["files"].items():
        file = path / name
        if not file.is_file():
            raise IndexFormatError(f"corrupt index at {path}: {name} is missing")
        if file.stat().st_size != expected["bytes"] or sha256_file(file) != expected["sha256"]:
            raise IndexFormatError(f"corrupt index at {path}: {name} does not match the manifest (changed or truncated)")
    try:
        index = faiss.read_index(str(path / entry["index_file"]))
    except RuntimeError as err:
        raise IndexFormatError(f"corrupt index at {path}: faiss cannot read {entry['index_file']} "
                               f"({str(err).splitlines()[-1][:100]})") from None
    try:
        lines = (path / entry["records_file"]).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"corrupt index at {path}: {entry['records_file']} is not JSON lines ({err})") from None
    if index.ntotal != len(records) or index.d != dimension:
        raise IndexFormatError(f"corrupt index at {path}: {kind} has {index.ntotal} {index.d}-d vectors but "
                               f"{len(records)} records and a {dimension}-d manifest")
    return _Part(kind, entry["factory"], index, records, Tuning(dict(entry.get("params") or {}), dict(entry.get("tuned_recall_at_10") or {})))
