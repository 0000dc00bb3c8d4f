import numpy as np
import pytest

from vislang.data.catalog import Catalog, Item
from vislang.eval import chance_levels, evaluate
from vislang.eval.retrieval import (ZERO_SHOT_PARAPHRASES, coverage_at_k, coverage_per_query, evaluate_with_intervals,
                                    metric_means, per_query_scores, recall_at_k, recall_hits, room_category_scores)
from vislang.eval.retrieval import lookalike_texts as retrieval_lookalikes
from vislang.models.lookalike import lookalike_texts
from vislang.models.room_category import category_probabilities
from vislang.models.room_vote import room_vote


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


def test_room_vote_hand_case():
    queries = np.array([[1.0, 0.0]])
    rooms = np.array([[1.0, 0.0], [0.0, 1.0]])  # the first looks exactly like the query, the second not at all
    links = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    expected = np.array([[1.0, np.exp(-10.0), 1.0]])  # exp((cos - 1) / 0.1)
    np.testing.assert_allclose(room_vote(queries, rooms, links, 0.1), expected, rtol=1e-6)
    dropped = room_vote(queries, rooms, links, 0.1, exclude=np.array([[True, False]]))
    np.testing.assert_allclose(dropped, [[0.0, np.exp(-10.0), 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        room_vote(queries, rooms, links, 0.0)


class _LookalikeRoomEncoder(_CaptionOnlyLinkEncoder):
    """As above, but the target's caption reads like nothing either; only a training room that looks
    like the test room, and lists the target, can find it."""

    def encode_texts(self, texts, batch_size=256):
        return np.asarray([[0.0, 0.0, 1.0] for _ in texts], np.float32)

    def room_vote(self, queries, rooms, links, exclude=None):
        return 2.0 * room_vote(queries, rooms, links, 0.1, exclude)


def test_room_to_products_adds_the_votes_of_lookalike_training_rooms(tmp_path):
    items = [Item(f"d{i}", "product", tmp_path / f"d{i}.jpg", (f"D{i} Lamp, White",), "train") for i in range(55)]
    items.append(Item("target", "product", tmp_path / "t.jpg", ("Target Sofa, Grey",), "train"))
    items.append(Item("seen", "room", tmp_path / "s.jpg", ("a room",), "train", ("target",), {"category": "Living room"}))
    items.append(Item("r", "room", tmp_path / "r.jpg", ("a living room",), "test", ("target",), {"category": "Living room"}))
    catalog = Catalog(items, tmp_path)
    encoder = _LookalikeRoomEncoder(catalog)
    metrics = evaluate(encoder, catalog, "test")
    assert metrics["room2products_embed_r50"] == 0.0  # 55 products score above the target without the vote
    assert metrics["room2products_r50"] == 1.0  # the training room like it lists the target
    assert evaluate(encoder, catalog, "train")["room2products_r50"] == 0.0  # a room never votes for itself


def test_lookalike_texts_hand_case():
    images = np.array([[1.0, 0.0]])
    bank_images = np.array([[1.0, 0.0], [0.6, 0.8]])  # cosines 1 and 0.6 with the image
    bank_texts = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mean = np.array([0.0, 1.0, np.exp(-4.0)])  # weights exp(cos / 0.1), relative to the nearest
    np.testing.assert_allclose(lookalike_texts(images, bank_images, bank_texts, 0.1), [mean / np.linalg.norm(mean)], rtol=1e-6)
    dropped = lookalike_texts(images, bank_images, bank_texts, 0.1, exclude=np.array([[True, False]]))
    np.testing.assert_allclose(dropped, [[0.0, 0.0, 1.0]], atol=1e-7)
    nothing = lookalike_texts(images, bank_images, bank_texts, 0.1, exclude=np.array([[True, True]]))
    np.testing.assert_array_equal(nothing, [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="temperature"):
        lookalike_texts(images, bank_images, bank_texts, 0.0)


class _LookalikeProductEncoder:
    """The target's photo and caption do not meet in this space, but a training product whose photo
    looks exactly like the target's has a caption that reads like the target's."""

    IMAGES = {"target": [0.0, 1.0, 0.0], "twin": [0.0, 1.0, 0.0]}
    TEXTS = {"Target Sofa, Grey": [1.0, 0.0, 0.0], "Target Sofa, Blue": [1.0, 0.0, 0.0]}

    def __init__(self, catalog, weight):
        self.by_image, self.weight = {item.image: item for item in catalog}, weight

    def encode_images(self, items, batch_size=64):
        return np.asarray([self.IMAGES.get(self.by_image[path].id, [0.1, 0.0, 0.995]) for path in items], np.float32)

    def encode_texts(self, texts, batch_size=256):
        return np.asarray([self.TEXTS.get(text, [0.0, 0.0, 1.0]) for text in texts], np.float32)

    def lookalike_texts(self, images, bank_images, bank_texts, exclude=None):
        return None if not self.weight else self.weight * lookalike_texts(images, bank_images, bank_texts, 0.1, exclude)


def test_product_rankings_add_the_captions_of_lookalike_training_products(tmp_path):
    items = [Item(f"d{i}", "product", tmp_path / f"d{i}.jpg", ("Other Lamp, White",), split)
             for i, split in enumerate(["test"] * 10 + ["train"] * 5)]
    items.append(Item("target", "product", tmp_path / "t.jpg", ("Target Sofa, Grey",), "test"))
    items.append(Item("twin", "product", tmp_path / "w.jpg", ("Target Sofa, Blue",), "train"))
    catalog = Catalog(items, tmp_path)
    without = evaluate(_LookalikeProductEncoder(catalog, 0.0), catalog, "test")
    assert without["product_text2image_r1"] == pytest.approx(10 / 11)  # the target's caption finds a lamp first
    encoder = _LookalikeProductEncoder(catalog, 2.0)
    with_lookalikes = evaluate(encoder, catalog, "test")
    assert with_lookalikes["product_text2image_r1"] == 1.0  # the twin's caption is the target's photo's look-alike text
    assert with_lookalikes["product_image2text_r1"] == 1.0  # and the same on the query's side
    # a training item never borrows its own caption: the twin's look-alikes are then the lamps
    train = catalog.select("train", "product")
    borrowed = retrieval_lookalikes(encoder, catalog, train, encoder.encode_images([item.image for item in train]), {})
    np.testing.assert_allclose(borrowed[-1], [0.0, 0.0, 2.0], atol=1e-6)


def test_category_probabilities_hand_case():
    bank = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])  # cosines 1, 0.6, 0.6 with the query
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.0]])
    rest = 2 * np.exp(-4.0)  # weights exp(cos / 0.1), relative to the nearest
    np.testing.assert_allclose(category_probabilities(query, bank, labels, 3, 0.1), [[1 / (1 + rest), rest / (1 + rest), 0.0]],
                               rtol=1e-6)
    own_left_out = category_probabilities(query, bank, labels, 3, 0.1, exclude=np.array([[True, False, False]]))
    np.testing.assert_allclose(own_left_out, [[0.0, 1.0, 0.0]], atol=1e-7)
    np.testing.assert_array_equal(category_probabilities(query, bank, labels, 3, 0.1, exclude=np.ones((1, 3), bool)), [[0, 0, 0]])
    np.testing.assert_array_equal(category_probabilities(query, bank[:0], labels[:0], 3, 0.1), [[0, 0, 0]])  # no training rooms
    with pytest.raises(ValueError, match="labels"):
        category_probabilities(query, bank, np.array([0, 1, 3]), 3, 0.1)


class _RoomCategoryEncoder:
    """Room titles and photos do not meet in this space (one title is even nearer the wrong photo),
    but each test room's title and photo look like those of a training room of its kind."""

    TEXTS = {"sweet dreams": [1, 0, 0, 0], "dream on": [1, 0, 0, 0], "cook it up": [0, 1, 0, 0], "chef's table": [0, 1, 0, 0]}
    IMAGES = {"bed": [0, 0, 1, 0], "test-bed": [0, 0, 1, 0], "kitchen": [0, 0, 0, 1], "test-kitchen": [0.1, 0, 0, 0.995]}

    def __init__(self, catalog, weight):
        self.by_image, self.weight = {item.image: item for item in catalog}, weight

    def encode_images(self, items, batch_size=64):
        return np.asarray([self.IMAGES[self.by_image[path].id] for path in items], np.float32)

    def encode_texts(self, texts, batch_size=256):
        return np.asarray([self.TEXTS.get(text, [0, 0, 0, 0]) for text in texts], np.float32)

    def room_categories(self, embeddings, bank, labels, categories, modality, exclude=None):
        if not self.weight:
            return None
        probabilities = category_probabilities(embeddings, bank, labels, categories, 0.1, exclude)
        return probabilities if modality == "text" else self.weight * probabilities


def test_room_titles_rank_by_the_kind_of_room_title_and_photo_agree_on(tmp_path):
    def room(name, title, split, category):
        return Item(name, "room", tmp_path / f"{name}.jpg", (title,), split, (), {"category": category})

    catalog = Catalog([room("test-bed", "dream on", "test", "Bedroom"), room("test-kitchen", "chef's table", "test", "Kitchen"),
                       room("bed", "sweet dreams", "train", "Bedroom"), room("kitchen", "cook it up", "train", "Kitchen")], tmp_path)
    without = evaluate(_RoomCategoryEncoder(catalog, 0.0), catalog, "test")
    assert without["room_title2image_r1"] == 0.0  # "dream on" is nearer the kitchen; "chef's table" ties, bedroom first
    encoder = _RoomCategoryEncoder(catalog, 1.0)
    assert evaluate(encoder, catalog, "test")["room_title2image_r1"] == 1.0
    # a training room never classifies its own title or photo: each is then read from the other room
    # alone, which is of the other kind (left in, each would be read as its own kind: the identity)
    train, test = catalog.select("train", "room"), catalog.select("test", "room")
    train_titles = encoder.encode_texts([item.caption for item in train])
    test_photos = encoder.encode_images([item.image for item in test])
    own_titles_out = room_category_scores(encoder, catalog, train_titles, test, test_photos, {}, text_items=train)
    np.testing.assert_allclose(own_titles_out, [[0.0, 1.0], [1.0, 0.0]], atol=1e-4)  # the other kind keeps exp(-1 / 0.1) of the weight
    test_titles = encoder.encode_texts([item.caption for item in test])
    own_photos_out = room_category_scores(encoder, catalog, test_titles, train, encoder.encode_images([item.image for item in train]), {})
    np.testing.assert_allclose(own_photos_out, [[0.0, 1.0], [1.0, 0.0]], atol=1e-4)
