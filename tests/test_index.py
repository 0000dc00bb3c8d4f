"""The search index: exact against brute force, save/load/add round trips, refusals, tuning, goes-with."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

import vislang
from vislang.checkpoint import save_checkpoint
from vislang.config import load_config
from vislang.data import read_catalog
from vislang.data.images import ImageLoadError
from vislang.models import create_model
from vislang.search import (
    FactoryError,
    Index,
    IndexFormatError,
    IndexMismatchError,
    QueryError,
)
from vislang.search.device import set_search_params, to_gpu
from vislang.search.factory import (
    EXACT_BELOW,
    Queries,
    build_faiss_index,
    choose_factory,
    exact_neighbours,
    recall_at_k,
    resolve_factory,
    tune,
)
from vislang.eval.retrieval import catalog_reranker
from vislang.search.files import sha256_file
from vislang.search.query import normalize
from vislang.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TINY = ["model.image.image_size=32", "train.batch_size=12", "train.epochs=3", "train.checkpoint_every=100"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_catalog, tmp_path_factory) -> Path:
    """A tiny trained model, matching head on (the tiny config has it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    final = train(load_config(CONFIG, TINY), data=str(tiny_catalog), output=tmp_path_factory.mktemp("run") / "run")
    torch.set_num_threads(threads)
    return final


@pytest.fixture(scope="module")
def model(checkpoint):
    return vislang.load(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return read_catalog(tiny_catalog)


@pytest.fixture(scope="module")
def index(model, catalog) -> Index:
    return Index.build(model, catalog, progress=False, gpu=False)


def _ids(hits):
    return [hit.id for hit in hits]


def _scores(hits):
    return [hit.score for hit in hits]


# ---------------------------------------------------------------- search is exact search


@pytest.mark.slow
def test_text_search_equals_brute_force_cosine(index, model, catalog):
    products = catalog.select(None, "product")
    everything = list(catalog)
    images = {item.id: row for item, row in zip(everything, model.encode_images([item.image for item in everything]))}
    product_images = np.stack([images[p.id] for p in products])
    assert index.parts["product"].index.d == index.dimension  # the stored vectors are the embeddings alone
    queries = ["a red chair", "Lamp, Blue", "a room with a bed"]
    vectors = model.encode_texts(queries)
    for query, scores, hits in zip(queries, vectors @ product_images.T, index.search(texts=queries, k=5, kind="product")):
        order = np.argsort(-scores, kind="stable")[:5]
        assert _ids(hits) == [products[i].id for i in order], query
        np.testing.assert_allclose(_scores(hits), scores[order], rtol=1e-5, atol=1e-6)
        assert all(hit.kind == "product" for hit in hits)
    # every kind: the per-kind answers merged by score are the top of one brute-force ranking; a
    # room photo finds its own room first, then products and rooms mixed
    gallery = np.stack([images[item.id] for item in everything])
    room = catalog.select(None, "room")[0]
    for vector, hits in ((vectors[2], index.search(texts=queries[2], k=12)[0]),
                         (images[room.id], index.search(images=room.image, k=12)[0])):
        scores = gallery @ vector
        order = np.argsort(-scores, kind="stable")[:12]
        np.testing.assert_allclose(_scores(hits), scores[order], rtol=1e-5, atol=1e-6)
        assert _ids(hits) == [everything[i].id for i in order]
    assert hits[0].id == room.id and {hit.kind for hit in hits} == {"product", "room"}


def _reranked_brute_force(model, catalog, texts: np.ndarray, items) -> np.ndarray:
    """What `vislang eval --reranker` ranks `items` by for `texts`: cosine plus the catalog's re-ranker."""
    gallery = model.encode_images([item.image for item in items])
    return catalog_reranker(model, catalog).text_to_image(texts @ gallery.T, texts, gallery, items[0].kind,
                                                         image_keys=[item.image for item in items])


@pytest.mark.slow
def test_the_reranker_rescores_text_search_as_eval_does(index, model, catalog):
    """The tiny catalog's kinds hold fewer items than RERANK_CANDIDATES: the re-ranked search is then
    eval's re-ranked ranking, down to the scores (each indexed training item leaving itself out)."""
    queries = ["a red chair", "a room with a bed"]
    vectors = model.encode_texts(queries)
    for kind in ("product", "room"):
        items = catalog.select(None, kind)
        expected = _reranked_brute_force(model, catalog, vectors, items)
        plain = index.search(texts=queries, k=len(items), kind=kind)
        for scores, hits, cosine in zip(expected, index.search(texts=queries, k=len(items), kind=kind, reranker=True), plain):
            order = np.argsort(-scores, kind="stable")
            assert _ids(hits) == [items[i].id for i in order]
            np.testing.assert_allclose(_scores(hits), scores[order], rtol=1e-5, atol=1e-5)
            assert _scores(hits) != pytest.approx(_scores(cosine), abs=1e-3)  # the terms do count
    # a photo+text query: the terms times the text's share of the unit query
    item = catalog.select(None, "product")[0]
    products = catalog.select(None, "product")
    gallery = model.encode_images([p.image for p in products])
    summed = 0.4 * model.encode_images([item.image]) + 0.6 * model.encode_texts(["a blue lamp"])
    query = summed / np.linalg.norm(summed)
    terms = _reranked_brute_force(model, catalog, query, products) - query @ gallery.T
    scores = (query @ gallery.T + 0.6 / np.linalg.norm(summed) * terms)[0]
    hits = index.search(texts="a blue lamp", images=item.image, k=6, kind="product", reranker=True)[0]
    order = np.argsort(-scores, kind="stable")[:6]
    assert _ids(hits) == [products[i].id for i in order]
    np.testing.assert_allclose(_scores(hits), scores[order], rtol=1e-5, atol=1e-5)
    with pytest.raises(QueryError, match="re-ranker needs a text"):
        index.search(images=item.image, reranker=True)


@pytest.mark.slow
def test_photo_finds_itself_and_photo_plus_text_is_weighted_arithmetic(index, model, catalog):
    item = catalog.select(None, "product")[0]
    top = index.search(images=item.image, k=1)[0][0]
    assert top.id == item.id and top.score == pytest.approx(1.0, abs=1e-5)
    photo, text = model.encode_images([item.image]), model.encode_texts(["a blue lamp"])
    products = catalog.select(None, "product")
    gallery = model.encode_images([p.image for p in products])
    for weight in (0.0, 0.6, 1.0):
        combined = index.search(texts="a blue lamp", images=item.image, k=6, text_weight=weight, kind="product")[0]
        summed = (1 - weight) * photo + weight * text
        scores = gallery @ (summed[0] / np.linalg.norm(summed))
        order = np.argsort(-scores, kind="stable")[:6]
        assert _ids(combined) == [products[i].id for i in order]
        np.testing.assert_allclose(_scores(combined), scores[order], rtol=1e-5, atol=1e-6)
    assert _ids(index.search(texts="a blue lamp", images=item.image, k=6, text_weight=1.0)[0]) == \
        _ids(index.search(texts="a blue lamp", k=6)[0])


@pytest.mark.slow
def test_rerank_rescores_the_top_n_with_the_matching_head(index, model):
    plain = index.search(texts="a green table", k=8, kind="product")[0]
    reranked = index.search(texts="a green table", k=8, kind="product", rerank=5)[0]
    head = reranked[:5]
    assert set(_ids(head)) == set(_ids(plain[:5])) and _ids(reranked[5:]) == _ids(plain[5:])
    expected = model.match([hit.image for hit in head], ["a green table"] * 5)
    np.testing.assert_allclose([hit.rerank_score for hit in head], expected, rtol=1e-5)
    assert [hit.rerank_score for hit in head] == sorted((hit.rerank_score for hit in head), reverse=True)
    assert all(hit.rerank_score is None for hit in reranked[5:])
    with pytest.raises(QueryError, match="needs a text"):
        index.search(images=head[0].image, rerank=3)


@pytest.mark.slow
def test_bad_queries_are_refused_before_any_work(index):
    with pytest.raises(QueryError, match="empty query"):
        index.search()
    with pytest.raises(QueryError, match="empty query text"):
        index.search(texts="   ")
    with pytest.raises(QueryError, match="unknown kind"):
        index.search(texts="a chair", kind="sofa")
    with pytest.raises(QueryError, match="k must be"):
        index.search(texts="a chair", k=0)
    with pytest.raises(ImageLoadError):
        index.search(images=Path(__file__))  # a file that is not an image


@pytest.mark.slow
def test_unreadable_images_are_skipped_and_counted(model, catalog, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a JPEG")
    items = catalog.select(None, "product")[:10]
    items.insert(3, replace(items[0], id="broken", image=broken))
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        index = Index.build(model, items, progress=False, gpu=False)
    assert len(index) == 10 and index.record("product", "broken") is None
    assert [r["id"] for r in index.parts["product"].records] == [item.id for item in items if item.id != "broken"]


# ---------------------------------------------------------------- on disk


@pytest.mark.slow
def test_save_load_search_is_identical(index, tmp_path, catalog, checkpoint):
    folder = index.save(tmp_path / "index")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dimension"] == 32 and manifest["metric"] == "inner_product" and manifest["count"] == len(catalog)
    assert manifest["version"] == 5 and "lookalikes" not in manifest and "room_categories" not in manifest
    assert manifest["factory"] == "auto" and manifest["model"]["fingerprint"].startswith("sha256:")
    assert Path(manifest["model"]["checkpoint"]) == Path(checkpoint).resolve()
    assert {kind: part["count"] for kind, part in manifest["parts"].items()} == {"product": 48, "room": 8}
    assert not list(folder.glob(".*tmp*"))
    loaded = Index.load(folder, gpu=False)
    queries = ["a red chair", "a room with a lamp", "Table, Yellow"]
    item = catalog.select(None, "room")[0]
    for before, after in zip(index.search(texts=queries, k=10), loaded.search(texts=queries, k=10)):
        assert _ids(before) == _ids(after) and _scores(before) == _scores(after)
    assert index.search(images=item.image, k=10) == loaded.search(images=item.image, k=10)
    with pytest.raises(FileExistsError, match="--overwrite"):
        index.save(folder)


@pytest.mark.slow
def test_add_then_search_finds_the_new_items(index, model, catalog, tmp_path):
    # not training items: the re-ranker's banks are then those of the index built in one go
    held_back = {item.id for item in catalog.select(None, "product") if item.split != "train"}
    held_back = set(sorted(held_back)[-5:]) | set(sorted(item.id for item in catalog.select(None, "room") if item.split != "train")[-2:])
    first = Index.build(model, [item for item in catalog if item.id not in held_back], progress=False, gpu=False)
    folder = first.save(tmp_path / "index")
    old_files = {p.name for p in folder.iterdir()}

    grown = Index.load(folder, gpu=False)
    assert grown.add(catalog, progress=False) == 7
    assert grown.add(catalog, progress=False) == 0  # already there: nothing twice
    grown.save(folder, overwrite=True)
    reloaded = Index.load(folder, gpu=False)
    assert len(reloaded) == len(catalog)
    for item in catalog:
        if item.id in held_back:
            top = reloaded.search(images=item.image, k=1, kind=item.kind)[0][0]
            assert top.id == item.id and top.score == pytest.approx(1.0, abs=1e-5)
    # a text query scores every item as the index built in one go does, with the re-ranker too
    # (whose banks, the indexed training items, are the same)
    for kind in ("product", "room"):
        n = len(catalog.select(None, kind))
        for reranker in (False, True):
            scored = [{hit.id: hit.score for hit in found.search(texts="a red chair", k=n, kind=kind, reranker=reranker)[0]}
                      for found in (reloaded, index)]
            assert scored[0].keys() == scored[1].keys()
            np.testing.assert_allclose([scored[0][i] for i in scored[1]], list(scored[1].values()), rtol=1e-5, atol=1e-6)
    # the previous generation's files are gone, the new manifest names only existing files
    manifest = json.loads((folder / "manifest.json").read_text())
    named = {name for part in manifest["parts"].values() for name in part["files"]}
    assert {p.name for p in folder.iterdir()} == named | {"manifest.json"}
    assert not named & old_files


@pytest.mark.slow
def test_another_checkpoint_or_dimension_is_refused(index, model, tmp_path):
    folder = index.save(tmp_path / "index")
    changed = vislang.load(model.checkpoint, device="cpu")
    with torch.no_grad():
        next(changed.model.parameters()).add_(0.01)
    other = save_checkpoint(tmp_path / "other", 1, changed.model, changed.tokenizer, changed.config)
    with pytest.raises(IndexMismatchError, match="another checkpoint"):
        Index.load(folder, model=other)

    config = load_config(CONFIG, ["model.embed_dim=16", "model.decoder.enabled=false"])
    small, tokenizer = create_model(config["model"])
    narrow = save_checkpoint(tmp_path / "narrow", 1, small, tokenizer, config)
    with pytest.raises(IndexMismatchError, match="32-d vectors but .* 16-d"):
        Index.load(folder, model=narrow)
    with pytest.raises(IndexMismatchError, match="16-d"):
        index.search_vectors(np.zeros((1, 16), np.float32))


@pytest.mark.slow
def test_missing_and_corrupt_files_are_refused(index, tmp_path):
    folder = index.save(tmp_path / "index")

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        return copy

    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.load(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IndexFormatError, match="has no manifest.json"):
        Index.load(empty)
    bad = broken("bad-json")
    (bad / "manifest.json").write_text("{")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        Index.load(bad)
    bad = broken("no-key")
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["dimension"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="dimension"):
        Index.load(bad)
    bad = broken("version-4")  # its vectors carry ranking terms in extra coordinates
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["version"] = 4
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="version 4 index.*embeddings alone.*rebuild it"):
        Index.load(bad)
    manifest = json.loads((folder / "manifest.json").read_text())
    index_file = manifest["parts"]["product"]["index_file"]
    bad = broken("truncated")
    data = (bad / index_file).read_bytes()
    (bad / index_file).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="does not match the manifest"):
        Index.load(bad)
    bad = broken("missing")
    (bad / manifest["parts"]["room"]["records_file"]).unlink()
    with pytest.raises(IndexFormatError, match="is missing"):
        Index.load(bad)
    # garbage that the manifest vouches for still fails in faiss, as a format error
    bad = broken("garbage")
    (bad / index_file).write_bytes(b"not a faiss index at all")
    manifest["parts"]["product"]["files"][index_file] = {"bytes": 24, "sha256": sha256_file(bad / index_file)}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="faiss cannot read"):
        Index.load(bad)


# ---------------------------------------------------------------- goes with


@pytest.mark.slow
def test_goes_with_ranks_products_of_rooms_with_look_alikes(index, catalog):
    query = catalog.select(None, "product")[0]
    result = index.goes_with(query.id, k=5, rooms=3)
    rooms = {room.id: room for room in catalog.select(None, "room")}
    assert result.rooms and len(result.rooms) <= 3
    assert [r.score for r in result.rooms] == sorted((r.score for r in result.rooms), reverse=True)
    for room in result.rooms:
        assert result.anchors[room.id] in rooms[room.id].links
    assert result.products and query.id not in _ids(result.products)
    assert not set(_ids(result.products)) & set(result.anchors.values())
    for hit in result.products:
        assert hit.kind == "product" and hit.rooms
        assert all(hit.id in rooms[r].links for r in hit.rooms)
        assert hit.score == pytest.approx(sum(next(x.score for x in result.rooms if x.id == r) for r in hit.rooms))
    # the same product's photo gives the same answer, the product itself left out as well
    by_photo = index.goes_with(str(query.image), k=5, rooms=3)
    assert _ids(by_photo.products) == _ids(result.products)


@pytest.mark.slow
def test_goes_with_refuses_unknown_ids_and_missing_images(index):
    with pytest.raises(QueryError, match="unknown id"):
        index.goes_with("999.999.99")
    with pytest.raises(ImageLoadError, match="image not found"):
        index.goes_with("photos/my-sofa.jpg")


# ---------------------------------------------------------------- factory and tuning


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((n // 20, dim)).astype(np.float32))
    return normalize(centres[rng.integers(len(centres), size=n)] + 0.15 * rng.standard_normal((n, dim)).astype(np.float32))


def test_auto_is_exact_for_small_collections_and_ivf_for_large():
    assert choose_factory(2_500, 256) == "Flat" and choose_factory(EXACT_BELOW - 1, 256) == "Flat"
    assert choose_factory(100_000, 256) == "IVF1024,Flat"
    assert choose_factory(1_000_000, 256) == "IVF4096,Flat"
    assert choose_factory(10_000_000, 256) == "IVF16384,SQ8"  # 10 GB of vectors: over the memory budget
    with pytest.raises(FactoryError, match="needs at least 1024 vectors"):
        resolve_factory("IVF1024,Flat", 500, 32)
    with pytest.raises(FactoryError, match="cannot build"):
        resolve_factory("Nonsense", 500, 32)


def test_tuned_ivf_reaches_the_recall_target_on_unseen_queries():
    vectors = _clustered(20_000, 32, seed=0)
    tune_rows = np.arange(0, 20_000, 40)
    unseen = normalize(vectors[:500] + 0.1 * np.random.default_rng(1).standard_normal((500, 32)).astype(np.float32))
    index = build_faiss_index(vectors, "IVF256,Flat")
    tuning = tune(index, vectors, "IVF256,Flat", [Queries("photo", vectors[tune_rows], own=tune_rows)], target=0.95)
    nprobe = tuning.params["nprobe"]
    assert 1 < nprobe < 256 and tuning.recall["photo"] >= 0.95
    truth = exact_neighbours(unseen, vectors, 10)
    assert recall_at_k(index.search(unseen, 10)[1], truth) >= 0.93
    set_search_params(index, {"nprobe": 1})  # the target is not met for free: one list is far from enough
    assert recall_at_k(index.search(unseen, 10)[1], truth) < 0.9


def test_tuned_hnsw_sets_ef_search():
    vectors = _clustered(5_000, 16, seed=2)
    rows = np.arange(0, 5_000, 25)
    index = build_faiss_index(vectors, "HNSW16")
    tuning = tune(index, vectors, "HNSW16", [Queries("photo", vectors[rows], own=rows)], target=0.97)
    assert set(tuning.params) == {"efSearch"} and tuning.recall["photo"] >= 0.97
    assert index.hnsw.efSearch == tuning.params["efSearch"]


@pytest.mark.slow
def test_ivf_index_keeps_its_tuning_through_save_and_load(model, catalog, tmp_path):
    index = Index.build(model, catalog, kinds="products", factory="IVF8,Flat", progress=False, gpu=False)
    part = index.parts["product"]
    assert index.kinds == ["product"] and part.factory == "IVF8,Flat" and 1 <= part.tuning.params["nprobe"] <= 8
    loaded = Index.load(index.save(tmp_path / "ivf"), gpu=False)
    assert loaded.parts["product"].tuning.params == part.tuning.params
    assert faiss.extract_index_ivf(loaded.parts["product"].searcher).nprobe == part.tuning.params["nprobe"]
    assert loaded.search(texts="a red lamp", k=10) == index.search(texts="a red lamp", k=10)
    # an IVF hands back stored rows by label too (a room search reads them), also after a save
    products = catalog.select(None, "product")
    labels = [5, 0, 17]
    stored = model.encode_images([products[i].image for i in labels])
    for ivf in (index, loaded):
        np.testing.assert_allclose(ivf.embeddings("product", labels), stored, atol=1e-6)


# ---------------------------------------------------------------- GPU


@pytest.mark.slow
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="faiss sees no GPU")
def test_gpu_and_cpu_indexes_return_the_same_top_10(index, model, tmp_path):
    folder = index.save(tmp_path / "index")
    cpu, gpu = Index.load(folder, model=model, gpu=False), Index.load(folder, model=model, gpu=True)
    assert "GPU" in gpu.summary()
    queries = ["a red chair", "a room with a bed", "Lamp, Blue", "a yellow table"]
    for on_cpu, on_gpu in zip(cpu.search(texts=queries, k=10), gpu.search(texts=queries, k=10)):
        assert _ids(on_cpu) == _ids(on_gpu)
        np.testing.assert_allclose(_scores(on_cpu), _scores(on_gpu), rtol=1e-4, atol=1e-5)
    vectors = _clustered(30_000, 32, seed=3)
    ivf = build_faiss_index(vectors, "IVF128,Flat")
    on_gpu = to_gpu(ivf)
    for target in (ivf, on_gpu):
        set_search_params(target, {"nprobe": 16})
    assert np.array_equal(ivf.search(vectors[:200], 10)[1], on_gpu.search(vectors[:200], 10)[1])
