import numpy as np
import pytest

from vislang.data.catalog import Catalog, Item
from vislang.eval import chance_levels, evaluate
from vislang.eval.retrieval import (ZERO_SHOT_PARAPHRASES, coverage_at_k, coverage_per_query, evaluate_with_intervals,
                                    metric_means, per_query_scores, recall_at_k, recall_hits)


def test_recall_at_k_hand_case():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    truth = [{0}, {1}, {2}]  # hit at 1; hit at 2; miss at both
    assert recall_at_k(scores, truth, (1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    assert recall_at_k(scores, [{0}, {1}, {1, 2}], (2,)) == {2: 1.0}  # any true item counts
    hits = recall_hits(scores, truth, (1, 2))  # the per-query vectors whose means are the above
    np.testing.assert_array_equal(hits[1], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(hits[2], [1.0, 1.0, 0.0])


def test_coverage_at_k_hand_case():
    scores = np.array([[0.9, 0.8, 0.1, 0.0]])
    assert coverage_at_k(scores, [{0, 2}], 2) == pytest.approx(0.5)
    np.testing.assert_allclose(coverage_per_query(np.vstack([scores, scores]), [{0, 2}, {0, 1}], 2), [0.5, 1.0])


def _paraphrase_prompt(category):
    return f"a photo of {ZERO_SHOT_PARAPHRASES[category.lower()]}"


class OracleEncoder:
    """Embeds an image and a text to the same one-hot vector when they belong together."""

    def __init__(self, catalog, paraphrased=True):
        self.paraphrased = paraphrased
        categories = ("Bedroom", "Kitchen")
        self.keys = sorted({item.caption for item in catalog} | {f"a photo of a {c.lower()}" for c in categories}
                           | {_paraphrase_prompt(c) for c in categories})
        self.by_image = {item.image: item for item in catalog}

    def _onehot(self, key):
        v = np.zeros(len(self.keys), np.float32)
        v[self.keys.index(key)] = 1
        return v

    def encode_images(self, items, batch_size=64):
        out = []
        for path in items:
            item = self.by_image[path]
            v = self._onehot(item.caption)
            if item.kind == "room":  # a room photo looks like its title and its category, named or paraphrased
                v = v + self._onehot(f"a photo of a {item.meta['category'].lower()}")
                if self.paraphrased:
                    v = v + self._onehot(_paraphrase_prompt(item.meta["category"]))
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    def encode_texts(self, texts, batch_size=256):
        return np.stack([self._onehot(t) if t in self.keys else np.zeros(len(self.keys), np.float32) for t in texts])


def _oracle_catalog(tmp_path, extra=()):
    items = [Item(f"p{i}", "product", tmp_path / f"p{i}.jpg", (f"P{i} Chair, Red",), "test") for i in range(4)]
    items.append(Item("p4", "product", tmp_path / "p4.jpg", ("P0 Chair, Red",), "test"))  # duplicate caption
    items.append(Item("r1", "room", tmp_path / "r1.jpg", ("a red room",), "test", ("p0",), {"category": "Bedroom"}))
    items.append(Item("r2", "room", tmp_path / "r2.jpg", ("a kitchen",), "test", ("p1",), {"category": "Kitchen"}))
    return Catalog(items + list(extra), tmp_path)


def test_evaluate_scores_a_perfect_encoder_perfectly(tmp_path):
    catalog = _oracle_catalog(tmp_path)
    metrics = evaluate(OracleEncoder(catalog), catalog, "test")
    assert metrics["product_text2image_r1"] == 1.0
    assert metrics["product_image2text_r1"] == 1.0
    assert metrics["room_title2image_r1"] == 1.0
    assert metrics["room_category_acc"] == 1.0
    assert metrics["room_category_zeroshot_acc"] == 1.0
    assert metrics["room2products_r50"] == 1.0  # 5 products: every one is in the top 50
    assert chance_levels(catalog, "test")["room_title2image_r5"] == 1.0  # 5 picks out of 2 rooms
    # a perfect ranking: every query a hit, so every interval is the degenerate [1, 1]
    values, intervals = evaluate_with_intervals(OracleEncoder(catalog), catalog, "test")
    assert values == metrics and intervals == {name: (1.0, 1.0) for name in metrics}


def test_the_metrics_are_the_means_of_the_per_query_scores(tmp_path):
    catalog = _oracle_catalog(tmp_path)
    encoder = OracleEncoder(catalog)
    encoder.encode_images = lambda items, batch_size=64: np.eye(len(encoder.keys), dtype=np.float32)[[  # a poor encoder
        (3 * i) % len(encoder.keys) for i in range(len(items))]]
    scores = per_query_scores(encoder, catalog, "test")
    assert {len(v) for k, v in scores.items() if k.startswith("product_")} == {5}  # one score a product query
    assert {len(v) for k, v in scores.items() if k.startswith("room")} == {2}  # one a room
    metrics = evaluate(encoder, catalog, "test")
    assert metrics == metric_means(scores) and min(metrics.values()) < 1  # not the perfect case above


def test_room_category_zeroshot_acc_only_when_no_training_text_holds_a_paraphrase(tmp_path):
    bed = ZERO_SHOT_PARAPHRASES["bedroom"]
    leaky = Item("t1", "room", tmp_path / "t1.jpg", ("a room", f"Sleep well: {bed.upper()}"), "train", (), {"category": "Bedroom"})
    catalog = _oracle_catalog(tmp_path, [leaky])
    metrics = evaluate(OracleEncoder(catalog), catalog, "test")
    assert "room_category_zeroshot_acc" not in metrics and metrics["room_category_acc"] == 1.0
    # the same text in a test item is no training text: the figure is zero-shot again
    catalog = _oracle_catalog(tmp_path, [Item("t1", "room", tmp_path / "t1.jpg", leaky.texts, "test", (), {"category": "Bedroom"})])
    assert "room_category_zeroshot_acc" in evaluate(OracleEncoder(catalog), catalog, "test")
    # a category without a paraphrase: no zero-shot figure either
    garage = Item("g", "room", tmp_path / "g.jpg", ("a garage",), "train", (), {"category": "Garage"})
    catalog = _oracle_catalog(tmp_path, [garage])
    assert "room_category_zeroshot_acc" not in evaluate(OracleEncoder(catalog), catalog, "test")


def test_room_category_zeroshot_acc_reads_the_paraphrases_not_the_category_names(tmp_path):
    catalog = _oracle_catalog(tmp_path)
    encoder = OracleEncoder(catalog, paraphrased=False)  # room photos look like their category's name only
    metrics = evaluate(encoder, catalog, "test")
    assert metrics["room_category_acc"] == 1.0
    assert metrics["room_category_zeroshot_acc"] == 0.5  # every paraphrase prompt ties: both rooms read as the first category


class _CaptionOnlyLinkEncoder:
    """A room whose product's photo looks unlike it while 55 other photos look a little like it;
    the product's caption, though, reads like the room."""

    def __init__(self, catalog):
        self.by_image = {item.image: item for item in catalog}

    def encode_images(self, items, batch_size=64):
        rows = []
        for path in items:
            item = self.by_image[path]
            if item.kind == "room":
                rows.append([1.0, 0.0, 0.0])
            elif item.id == "target":
                rows.append([0.0, 1.0, 0.0])
            else:
                rows.append([0.1, 0.0, 0.995])
        return np.asarray(rows, np.float32)

    def encode_texts(self, texts, batch_size=256):
        return np.asarray([[1.0, 0.0, 0.0] if t == "Target Sofa, Grey" else [0.0, 0.0, 1.0] for t in texts], np.float32)


def test_room_to_products_scores_a_product_by_its_photo_and_its_caption(tmp_path):
    items = [Item(f"d{i}", "product", tmp_path / f"d{i}.jpg", (f"D{i} Lamp, White",), "train") for i in range(55)]
    items.append(Item("target", "product", tmp_path / "t.jpg", ("Target Sofa, Grey",), "train"))
    items.append(Item("r", "room", tmp_path / "r.jpg", ("a living room",), "test", ("target",), {"category": "Living room"}))
    catalog = Catalog(items, tmp_path)
    metrics = evaluate(_CaptionOnlyLinkEncoder(catalog), catalog, "test")
    assert metrics["room2product_photos_r50"] == 0.0  # 55 photos score above the product's photo
    assert metrics["room2products_r50"] == 1.0  # its caption lifts it to the top


class _RandomEncoder:
    """Fixed random unit vectors per image and per text: rankings with no structure to lean on."""

    def __init__(self, dim=8):
        self.dim, self.rows = dim, {}

    def _row(self, key):
        if key not in self.rows:
            v = np.random.default_rng(len(self.rows)).standard_normal(self.dim).astype(np.float32)
            self.rows[key] = v / np.linalg.norm(v)
        return self.rows[key]

    def encode_images(self, items, batch_size=64):
        return np.stack([self._row(("image", path)) for path in items]).reshape(-1, self.dim)

    def encode_texts(self, texts, batch_size=256):
        return np.stack([self._row(("text", text)) for text in texts]).reshape(-1, self.dim)


def test_the_figures_are_those_of_plain_cosine_rankings(tmp_path):
    extra = [Item(f"t{i}", "product", tmp_path / f"t{i}.jpg", (f"T{i} Lamp, White",), "train") for i in range(6)]
    extra += [Item("tr", "room", tmp_path / "tr.jpg", ("a train room",), "train", ("t0",), {"category": "Bedroom"})]
    catalog = _oracle_catalog(tmp_path, extra)
    encoder = _RandomEncoder()
    scores = per_query_scores(encoder, catalog, "test")
    products, rooms = catalog.select("test", "product"), catalog.select("test", "room")
    images, texts = encoder.encode_images([p.image for p in products]), encoder.encode_texts([p.caption for p in products])
    truth = [{i for i, other in enumerate(products) if other.caption == p.caption} for p in products]
    for k, hits in recall_hits(texts @ images.T, truth, (1, 5, 10)).items():
        np.testing.assert_array_equal(scores[f"product_text2image_r{k}"], hits)
    for k, hits in recall_hits(images @ texts.T, truth, (1, 5, 10)).items():
        np.testing.assert_array_equal(scores[f"product_image2text_r{k}"], hits)
    titles, photos = encoder.encode_texts([r.caption for r in rooms]), encoder.encode_images([r.image for r in rooms])
    for k, hits in recall_hits(titles @ photos.T, [{0}, {1}], (1, 5)).items():
        np.testing.assert_array_equal(scores[f"room_title2image_r{k}"], hits)
    assert not any(name.startswith("reranked_") for name in scores)  # the re-ranker only when asked
