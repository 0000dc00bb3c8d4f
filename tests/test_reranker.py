"""The query-time re-ranker (vislang/ranking/): its kernels, its two terms, and eval's figures with it."""
import json

import numpy as np
import pytest

from vislang.data.catalog import Catalog, Item
from vislang.eval.report import format_report
from vislang.eval.retrieval import evaluate, evaluate_with_intervals
from vislang.ranking import Bank, Reranker, RerankSettings
from vislang.ranking.lookalike import lookalike_texts
from vislang.ranking.room_category import category_probabilities

LOOKALIKES_ONLY = RerankSettings(room_category_weight=0.0)
CATEGORIES_ONLY = RerankSettings(lookalike_weight=0.0)


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


# A sofa photo whose caption does not meet it in this space, a lamp photo a little nearer the sofa's
# caption, and two training products: the sofa's twin (same photo, a caption like the sofa's) and a lamp.
SOFA_CAPTION = np.array([[1.0, 0.0, 0.0]])
SOFA, LAMP = [0.0, 1.0, 0.0], [0.1, 0.0, 0.995]
TRAINING_PRODUCTS = Bank(images=np.array([SOFA, LAMP]), captions=np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
                         keys=("twin.jpg", "old-lamp.jpg"))


def test_the_lookalike_term_turns_a_product_ranking_round():
    gallery = np.array([SOFA, LAMP])
    reranker = Reranker({"product": TRAINING_PRODUCTS}, LOOKALIKES_ONLY)
    plain = SOFA_CAPTION @ gallery.T
    assert np.argmax(plain) == 1  # by cosine the lamp comes first
    reranked = reranker.text_to_image(plain, SOFA_CAPTION, gallery, "product")
    # the sofa borrows its twin's caption (cosine 1); the lamp borrows the lamp's (cosine 0)
    np.testing.assert_allclose(reranked, [[1.0, 0.1]], atol=1e-6)
    np.testing.assert_allclose(reranker.image_to_text(plain.T, gallery, SOFA_CAPTION, "product"), reranked.T, atol=1e-6)
    # a gallery item that is itself a training item never borrows its own caption
    own = reranker.text_to_image(plain, SOFA_CAPTION, gallery, "product", image_keys=["twin.jpg", "lamp.jpg"])
    np.testing.assert_allclose(own, plain, atol=1e-6)
    # a kind without training items, or a zero weight, adds nothing
    np.testing.assert_array_equal(reranker.text_to_image(plain, SOFA_CAPTION, gallery, "room"), plain)
    off = Reranker({"product": TRAINING_PRODUCTS}, RerankSettings(lookalike_weight=0.0))
    np.testing.assert_array_equal(off.text_to_image(plain, SOFA_CAPTION, gallery, "product"), plain)


# Room titles and photos that do not meet in this space, and two training rooms, one of each kind.
TITLES = {"sweet dreams": [1, 0, 0, 0], "dream on": [1, 0, 0, 0], "cook it up": [0, 1, 0, 0], "chef's table": [0, 1, 0, 0]}
PHOTOS = {"bed": [0, 0, 1, 0], "test-bed": [0, 0, 1, 0], "kitchen": [0, 0, 0, 1], "test-kitchen": [0.1, 0, 0, 0.995]}
TRAINING_ROOMS = Bank(images=np.array([PHOTOS["bed"], PHOTOS["kitchen"]], float),
                      captions=np.array([TITLES["sweet dreams"], TITLES["cook it up"]], float),
                      keys=("bed", "kitchen"), categories=("Bedroom", "Kitchen"))


def test_the_room_category_term_adds_the_chance_title_and_photo_name_the_same_kind_of_room():
    title = np.array([TITLES["dream on"]], float)
    photos = np.array([PHOTOS["test-bed"], PHOTOS["test-kitchen"]], float)
    plain = title @ photos.T
    assert np.argmax(plain) == 1  # by cosine the bedroom's title is nearer the kitchen
    reranked = Reranker({"room": TRAINING_ROOMS}, CATEGORIES_ONLY).text_to_image(plain, title, photos, "room")
    np.testing.assert_allclose(reranked, plain + [[1.6, 0.0]], atol=1e-6)  # the default weight, 1.6
    # a training room never classifies its own photo: it is then read from the other room alone
    own = Reranker({"room": TRAINING_ROOMS}, CATEGORIES_ONLY).text_to_image_terms(
        title, TRAINING_ROOMS.images, "room", image_keys=["bed", "kitchen"])
    np.testing.assert_allclose(own, [[0.0, 1.6]], atol=1e-6)
    # nor its own title: "sweet dreams", the bedroom's, is then read from the kitchen alone
    own_title = Reranker({"room": TRAINING_ROOMS}, CATEGORIES_ONLY).text_to_image_terms(
        np.array([TITLES["sweet dreams"]], float), photos, "room", text_keys=["bed"])
    np.testing.assert_allclose(own_title, [[0.0, 1.6]], atol=1e-4)
    # products have no kind of room; rooms of unknown kind lend no category
    assert not Reranker({"product": TRAINING_ROOMS}, CATEGORIES_ONLY).text_to_image_terms(title, photos, "product").any()
    unknown = Bank(TRAINING_ROOMS.images, TRAINING_ROOMS.captions, TRAINING_ROOMS.keys, (None, ""))
    assert not Reranker({"room": unknown}, CATEGORIES_ONLY).text_to_image_terms(title, photos, "room").any()


class _TableEncoder:
    """Embeds each item's image by a table of ids, each text by a table of texts (others: the last axis)."""

    def __init__(self, catalog, images, texts, width):
        self.ids, self.images, self.texts, self.width = {item.image: item.id for item in catalog}, images, texts, width

    def encode_images(self, items, batch_size=64):
        return np.asarray([self.images[self.ids[path]] for path in items], np.float32).reshape(-1, self.width)

    def encode_texts(self, texts, batch_size=256):
        other = [0.0] * (self.width - 1) + [1.0]
        return np.asarray([self.texts.get(text, other) for text in texts], np.float32).reshape(-1, self.width)


def _product_catalog(tmp_path):
    items = [Item(f"d{i}", "product", tmp_path / f"d{i}.jpg", ("Other Lamp, White",), split)
             for i, split in enumerate(["test"] * 10 + ["train"] * 5)]
    items.append(Item("target", "product", tmp_path / "t.jpg", ("Target Sofa, Grey",), "test"))
    items.append(Item("twin", "product", tmp_path / "w.jpg", ("Target Sofa, Blue",), "train"))
    catalog = Catalog(items, tmp_path)
    images = {item.id: LAMP for item in items} | {"target": SOFA, "twin": SOFA}
    texts = {"Target Sofa, Grey": [1.0, 0.0, 0.0], "Target Sofa, Blue": [1.0, 0.0, 0.0]}
    return catalog, _TableEncoder(catalog, images, texts, 3)


def test_eval_reports_the_reranked_product_figures_apart(tmp_path):
    catalog, encoder = _product_catalog(tmp_path)
    pure = evaluate(encoder, catalog, "test")
    assert pure["product_text2image_r1"] == pytest.approx(10 / 11)  # the target's caption finds a lamp first
    metrics, intervals = evaluate_with_intervals(encoder, catalog, "test", reranker=LOOKALIKES_ONLY)
    assert {name: value for name, value in metrics.items() if not name.startswith("reranked_")} == pure
    assert metrics["reranked_product_text2image_r1"] == 1.0  # the twin's caption is the target photo's look-alike text
    assert metrics["reranked_product_image2text_r1"] == 1.0  # and the same on the query's side
    assert intervals["reranked_product_text2image_r1"] == (1.0, 1.0)
    assert set(intervals) == set(metrics)
    # a training item never borrows its own caption: on the train split the twin reads as a lamp
    train = evaluate_with_intervals(encoder, catalog, "train", reranker=LOOKALIKES_ONLY)[0]
    assert train["reranked_product_text2image_r1"] == train["product_text2image_r1"]
    report = format_report(metrics, catalog, "test", intervals).splitlines()
    block = report.index("re-ranked at query time by the training items' look-alike captions and room categories (--reranker):")
    assert all("reranked_" not in line for line in report)
    assert report[block + 1].split()[:2] == ["product_text2image_r1", "1.000"]
    assert [line.split()[0] for line in report[:block]] == list(pure)
    json.dumps(metrics)


def test_eval_reports_the_reranked_room_title_figures_apart(tmp_path):
    def room(name, title, split, category):
        return Item(name, "room", tmp_path / f"{name}.jpg", (title,), split, (), {"category": category})

    catalog = Catalog([room("test-bed", "dream on", "test", "Bedroom"), room("test-kitchen", "chef's table", "test", "Kitchen"),
                       room("bed", "sweet dreams", "train", "Bedroom"), room("kitchen", "cook it up", "train", "Kitchen")], tmp_path)
    encoder = _TableEncoder(catalog, PHOTOS, TITLES, 4)
    metrics = evaluate_with_intervals(encoder, catalog, "test", reranker=CATEGORIES_ONLY)[0]
    assert metrics["room_title2image_r1"] == 0.0  # "dream on" is nearer the kitchen; "chef's table" ties, bedroom first
    assert metrics["reranked_room_title2image_r1"] == 1.0
    assert "reranked_room2products_r50" not in metrics and "reranked_room_category_acc" not in metrics
