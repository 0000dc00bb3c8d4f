"""`Index`: the FAISS index over a trained model's image embeddings, and its folder on disk.

One FAISS index per kind of item (rooms, products): a search for one kind is then exact in what
it returns (no over-fetching and filtering), each kind gets the index its size calls for, and a
search over every kind merges the per-kind answers by score (all scores are cosines in the same
space, less a penalty below). A FAISS label is the row of the kind's records list.

Text queries rank products as `vislang eval` does: by cosine less each product's hubness penalty
(models/hubness.py). FAISS ranks by inner product alone, so every stored vector carries one
coordinate more than the model's embedding, minus its penalty, and every query one more, its text
share (1 for a text, 0 for a photo, the text's coefficient in a photo+text query): the inner
product is then cosine - text share x penalty (exactly in a Flat index; an IVF, SQ8 or HNSW
index approximates it as it approximates the cosine). A model with look-alike captions
(`model.lookalike_texts`, models/lookalike.py) adds D coordinates more: each item stores the
weighted captions of the index's training items whose photos look like its photo (none its own),
and each query the query vector again times its text share, so a text query gains its cosine with
them, as in `vislang eval`, and a photo query nothing. An item's look-alikes are those of the
index when it was added; a rebuild refreshes them after training items have been added. A model
with room categories (`model.room_category`, models/room_category.py) adds one coordinate per kind
of room to the rooms' vectors (weight x P(category | photo), from the index's training rooms like
the photo) and to a query searching rooms (its text share x P(category | query), from the index's
training rooms whose titles are like it), so a text ranks rooms as in `vislang eval` too. The kinds
are those of the rooms indexed at build time; a training room of another kind added later is
not counted (a rebuild counts it).

The folder holds:
  manifest.json               format, version, model fingerprint and checkpoint, dimension
                              (the model's; the FAISS vectors have one more, the penalty, and
                              with `lookalikes` D more), room_categories (the rooms' vectors have
                              one more for each), metric, count, requested factory, and
                              per kind: count, factory,
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

from ..api import VisLang, load
from ..data.catalog import Catalog, Item
from ..data.images import ImageLike
from ..models.hubness import PLAIN_COSINE_KINDS
from ..models.room_category import ROOM_KIND
from .device import set_search_params, single_query_threads, to_cpu, to_gpu, want_gpu
from .embed import embed_images
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
from .files import model_fingerprint, sha256_file, write_atomic
from .hits import Hit, Record, item_type, record_of
from .query import DEFAULT_TEXT_WEIGHT, as_images, as_texts, check_query, query_vectors, with_share
from .query import rerank as rerank_hits
from .room_photo import check_room_query, room_photo_hits

# 2: vectors carry the hubness penalty; 3: and may carry look-alike captions; 4: and rooms their categories
FORMAT, VERSION = "vislang-index", 4
READABLE_VERSIONS = (2, 3, 4)  # an older index is a version 4 index without what came later
MANIFEST = "manifest.json"
METRIC_NAME = "inner_product"
TUNING_QUERIES = 1000  # per query set: enough for the margin of two standard errors to stay under 1%
KIND_ALIASES = {"rooms": "room", "products": "product", "images": "image"}


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
    def by_id(self) -> dict[str, Record]:
        return {record["id"]: record for record in self.records}

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
        self.__dict__.pop("by_id", None)


class Index:
    """Search a catalog's images by text, by photo, or by both.

    >>> index = Index.build("runs/demo", read_catalog(find_data_dir()))
    >>> index.save("runs/index")
    >>> Index.load("runs/index").search(texts="a bright scandinavian kitchen", kind="room", k=5)
    """

    def __init__(self, parts: dict[str, _Part], dimension: int, fingerprint: str, checkpoint: Path,
                 factory: str = "auto", target_recall: float = 0.95, gpu: bool | None = None, model: VisLang | None = None,
                 lookalikes: bool = False, room_categories: Sequence[str] = ()) -> None:
        self.parts, self.dimension, self.fingerprint = parts, dimension, fingerprint
        self.lookalikes, self.room_categories = lookalikes, list(room_categories)
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
        categories = sorted({item_type(item) for item in items if item.kind == ROOM_KIND} - {None})
        index = cls({}, model.model.cfg["embed_dim"], model_fingerprint(checkpoint), checkpoint, factory,
                    target_recall, gpu, model, lookalikes=bool(model.config["model"]["lookalike_texts"]["weight"]),
                    room_categories=categories if model.config["model"]["room_category"]["weight"] else ())
        for kind in dict.fromkeys(item.kind for item in items):  # a factory that cannot work fails before embedding
            resolve_factory(factory, sum(item.kind == kind for item in items), index.width(kind), f"the {kind} collection")
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
        vectors, kept = embed_images(self.model, [item.image for item in new], batch_size, progress)
        new = [new[i] for i in kept]
        for kind in dict.fromkeys(item.kind for item in new):
            rows = [i for i, item in enumerate(new) if item.kind == kind]
            stored = self._stored(kind, vectors[rows], [new[i] for i in rows])
            records = [record_of(new[i]) for i in rows]
            if kind in self.parts:
                self.parts[kind].add(stored, records)
            else:
                self._new_part(kind, stored, records, [new[i].caption for i in rows], progress)
            if kind == ROOM_KIND:
                self.__dict__.pop("_room_title_bank", None)
        return len(new)

    def width(self, kind: str) -> int:
        """Coordinates of the vectors stored for `kind` (see the module docstring)."""
        return stored_width(self.dimension, self.lookalikes, len(self.room_categories), kind)

    def embeddings(self, kind: str, labels: Sequence[int]) -> np.ndarray:
        """The image embeddings [N, D] stored for `kind` at rows `labels`."""
        return self.parts[kind].rows(labels)[:, : self.dimension]

    def _stored(self, kind: str, embeddings: np.ndarray, items: list[Item]) -> np.ndarray:
        """[N, width]: the items' embeddings, minus their hubness penalty (zero for plain-cosine kinds
        and for a model trained without one), their look-alike captions and, for rooms, their
        categories when the index has them: what FAISS holds (see the module docstring)."""
        penalty = (np.zeros(len(embeddings), np.float32) if kind in PLAIN_COSINE_KINDS
                   else self.model.hubness_penalty(embeddings, "image"))
        columns = [embeddings, -penalty[:, None]]
        borrows = self.lookalikes or self._categorised(kind)
        bank, records, exclude = self._training_bank(kind, embeddings, items) if borrows else (None, [], None)
        if self.lookalikes:
            captions = self.model.encode_texts([record["caption"] for record in records])
            columns.append(self.model.lookalike_texts(embeddings, bank, captions, exclude))
        if self._categorised(kind):
            labels, known = self._category_labels(records)
            columns.append(self.model.room_categories(embeddings, bank[known], labels, len(self.room_categories),
                                                      "image", exclude[:, known]))
        return np.ascontiguousarray(np.hstack(columns), dtype=np.float32)

    def _training_bank(self, kind: str, embeddings: np.ndarray, items: list[Item]) -> tuple[np.ndarray, list[Record], np.ndarray]:
        """What new items of `kind` borrow from: the embeddings [B, D] and records of the index's
        training items of that kind, those already indexed and those being added, and which of
        them each new item must leave out [N, B] (itself)."""
        old = [label for label, record in enumerate(self.parts[kind].records if kind in self.parts else [])
               if record.get("split") == "train"]
        new = [i for i, item in enumerate(items) if item.split == "train"]
        bank = np.concatenate([self.embeddings(kind, old) if old else embeddings[:0], embeddings[new]])
        records = [self.parts[kind].records[label] for label in old] + [record_of(items[i]) for i in new]
        exclude = np.zeros((len(items), len(bank)), bool)
        exclude[new, len(old) + np.arange(len(new))] = True
        return bank, records, exclude

    def _categorised(self, kind: str) -> bool:
        return kind == ROOM_KIND and bool(self.room_categories)

    def _category_labels(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        """The category index of each training room whose category (its record's type) the index
        knows, and which rooms those are."""
        known = np.array([record.get("type") in self.room_categories for record in records], bool)
        labels = np.array([self.room_categories.index(record["type"]) for record, ok in zip(records, known) if ok], np.int64)
        return labels, known

    @cached_property
    def _room_title_bank(self) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings of the indexed training rooms' titles and their category labels: what a
        query's P(category | text) is read from (dropped whenever rooms are added)."""
        records = [record for record in self.parts[ROOM_KIND].records if record.get("split") == "train"]
        labels, known = self._category_labels(records)
        titles = [record["caption"] for record, ok in zip(records, known) if ok]
        return self.model.encode_texts(titles), labels

    def _query(self, kind: str, vectors: np.ndarray, text_share: float | np.ndarray) -> np.ndarray:
        """What the stored vectors of `kind` are searched with (see the module docstring)."""
        query = with_share(vectors, text_share, self.lookalikes)
        if not self._categorised(kind):
            return query
        titles, labels = self._room_title_bank
        share = query[:, self.dimension : self.dimension + 1]
        by_text = self.model.room_categories(vectors, titles, labels, len(self.room_categories), "text")
        return np.ascontiguousarray(np.hstack([query, share * by_text]), dtype=np.float32)

    def _new_part(self, kind: str, stored: np.ndarray, records: list[Record], captions: list[str], progress: bool) -> None:
        factory = resolve_factory(self.factory, len(stored), self.width(kind), f"the {kind} collection")
        index = build_faiss_index(stored, factory, gpu=self.gpu, progress=progress)
        part = self.parts[kind] = _Part(kind, factory, index, records)
        part.place(self.gpu)
        if tuning_parameter(factory):
            part.tuning = tune(part.searcher, stored, factory,
                               self._tuning_queries(kind, stored[:, : self.dimension], captions), self.target_recall)

    def _tuning_queries(self, kind: str, embeddings: np.ndarray, captions: list[str]) -> list[Queries]:
        """Photo queries (the items' own photos, each leaving itself out) and text queries (the
        items' captions): the two kinds of query the index will answer, each held to the recall target."""
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(embeddings), min(TUNING_QUERIES, len(embeddings)), replace=False))
        texts = [captions[i] for i in rng.choice(len(captions), min(TUNING_QUERIES, len(captions)), replace=False)]
        return [Queries("photo", self._query(kind, embeddings[rows], 0.0), own=rows),
                Queries("text", self._query(kind, self.model.encode_texts(texts), 1.0))]

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
        return part.by_id.get(item_id) if part else None

    def _ids(self, kind: str) -> dict[str, Record]:
        return self.parts[kind].by_id if kind in self.parts else {}

    def _parts_for(self, kind: str | None) -> list[_Part]:
        if kind is None:
            return list(self.parts.values())
        name = KIND_ALIASES.get(kind, kind)
        if name not in self.parts:
            raise QueryError(f"unknown kind {kind!r}: this index holds {', '.join(self.parts) or 'nothing'}")
        return [self.parts[name]]

    def search(
        self,
        texts: str | Sequence[str] | None = None,
        images: ImageLike | Sequence[ImageLike] | None = None,
        k: int = 10,
        kind: str | None = None,
        rerank: int | None = None,
        text_weight: float = DEFAULT_TEXT_WEIGHT,
        room: bool = False,
    ) -> list[list[Hit]]:
        """One list of hits, best first, per query: a text, a photo, or a photo and a text
        (paired one to one). A hit's score is its cosine with the query, less its hubness penalty
        times the query's text share (see the module docstring). `rerank=N` re-scores the top N
        with the matching head and orders them by it (text queries only). `room=True`: the photos
        are of rooms; products are ranked by cosine plus the votes of the indexed rooms like the
        photo (room_photo.py)."""
        texts, images = as_texts(texts), as_images(images)
        check_query(texts, images, k, rerank, text_weight)
        if room:
            check_room_query(texts, images, kind, rerank)
            return room_photo_hits(self, self.model.encode_images(images), k)
        self._parts_for(kind)  # an unknown kind fails before the model is loaded
        vectors, text_share = query_vectors(self.model, texts, images, text_weight)
        results = self.search_vectors(vectors, max(k, rerank or 0), kind, text_share)
        if rerank:
            results = [rerank_hits(self.model, text, hits, rerank) for text, hits in zip(texts, results)]
        return [hits[:k] for hits in results]

    def search_vectors(self, vectors: np.ndarray, k: int = 10, kind: str | None = None,
                       text_share: float | np.ndarray = 0.0) -> list[list[Hit]]:
        """Search with query vectors already made (unit rows of the model's dimension) and the share
        of each that is a text (a number or one per row; 0, a photo, ranks by plain cosine)."""
        vectors = np.atleast_2d(vectors)
        if vectors.shape[1] != self.dimension:
            raise IndexMismatchError(f"query vectors are {vectors.shape[1]}-d, the index holds {self.dimension}-d vectors")
        results: list[list[Hit]] = [[] for _ in vectors]
        for part in self._parts_for(kind):
            wanted = min(k, len(part.records))
            if wanted == 0:
                continue
            query = self._query(part.kind, vectors, text_share)
            with single_query_threads(len(vectors)):
                scores, labels = part.searcher.search(query, wanted)
            for hits, row_scores, row_labels in zip(results, scores, labels):
                hits += [Hit.from_record(part.records[label], score) for score, label in zip(row_scores, row_labels) if label >= 0]
        # kinds are searched separately; their scores are cosines (less a penalty), so merge by score
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
        extra = " with look-alike captions" if self.lookalikes else ""
        extra += f" and {len(self.room_categories)} room categories" if self.room_categories else ""
        return f"{len(self)} images, {self.dimension}-d{extra}, on the {where}: " + "; ".join(parts)

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
            write_atomic(path / index_file, lambda tmp, index=part.index: faiss.write_index(index, str(tmp)))
            lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in part.records)
            write_atomic(path / records_file, lambda tmp, text=lines: tmp.write_text(text, encoding="utf-8"))
            parts[kind] = {
                "count": len(part.records), "factory": part.factory, "params": part.tuning.params,
                "tuned_recall_at_10": part.tuning.recall or None,
                "files": {name: _file_entry(path / name) for name in (index_file, records_file)},
                "index_file": index_file, "records_file": records_file,
            }
        manifest = {
            "format": FORMAT, "version": VERSION, "generation": generation,
            "model": {"fingerprint": self.fingerprint, "checkpoint": str(self.checkpoint)},
            "dimension": self.dimension, "lookalikes": self.lookalikes, "room_categories": self.room_categories,
            "metric": METRIC_NAME, "count": len(self),
            "factory": self.factory, "target_recall": self.target_recall, "parts": parts,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        text = json.dumps(manifest, indent=2) + "\n"
        write_atomic(path / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
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
            lookalikes = bool(manifest.get("lookalikes", False))
            categories = [str(name) for name in manifest.get("room_categories", [])]
            parts = {str(kind): _load_part(path, str(kind), entry, dimension,
                                           stored_width(dimension, lookalikes, len(categories), str(kind)))
                     for kind, entry in manifest["parts"].items()}
        except SearchError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise IndexFormatError(f"corrupt index at {path}: {MANIFEST} lacks or mangles {err}") from None
        index = cls(parts, dimension, fingerprint, checkpoint, factory, target, gpu, lookalikes=lookalikes,
                    room_categories=categories)
        if model is not None:
            index.use_model(model)
        return index


def stored_width(dimension: int, lookalikes: bool, room_categories: int, kind: str) -> int:
    """Coordinates of a vector stored for `kind`: the embedding, minus its penalty, its look-alike
    captions if any, and a room's categories if any."""
    return dimension * (2 if lookalikes else 1) + 1 + (room_categories if kind == ROOM_KIND else 0)


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
    if manifest.get("version") not in READABLE_VERSIONS:
        raise IndexFormatError(f"{path} is a version {manifest.get('version')} index; this vislang reads versions "
                               f"{', '.join(map(str, READABLE_VERSIONS))}: "
                               "rebuild it with `vislang index build`")
    if manifest.get("metric") != METRIC_NAME:
        raise IndexFormatError(f"{path} uses the metric {manifest.get('metric')!r}; vislang searches by {METRIC_NAME}")
    return manifest


def _load_part(path: Path, kind: str, entry: dict[str, Any], dimension: int, width: int) -> _Part:
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
    if index.ntotal != len(records) or index.d != width:
        raise IndexFormatError(f"corrupt index at {path}: {kind} has {index.ntotal} {index.d}-d vectors but "
                               f"{len(records)} records and a {dimension}-d manifest (the vectors take {width})")
    return _Part(kind, entry["factory"], index, records, Tuning(dict(entry.get("params") or {}), dict(entry.get("tuned_recall_at_10") or {})))
