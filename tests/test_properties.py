"""Property-based tests (hypothesis): manifest parsing, config overrides and search parameters hold
their contracts for any input: a result with its invariants, or the one error meant for the user."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vislang.config import DEFAULTS, ConfigError, load_config, parse_override
from vislang.data.catalog import SPLITS, ManifestError, read_manifest

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- manifests

IMAGES = ("a.jpg", "b.png", "missing.jpg", "sub/c.jpg", "../outside.jpg", "")
text = st.text(max_size=40)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=12)
rows = st.fixed_dictionaries(
    {"image": st.sampled_from(IMAGES) | json_values},
    optional={"id": text | st.integers() | json_values,
              "caption": text | json_values,
              "captions": st.lists(text, max_size=3) | text,
              "text_2": text,
              "split": st.sampled_from(SPLITS) | text | json_values,
              "kind": st.sampled_from(("image", "product", "room")) | text})
lines = st.lists(rows.map(json.dumps).map(str.encode)
                 | json_values.map(json.dumps).map(str.encode)
                 | st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")),
                 max_size=12)


def _manifest_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="manifest-"))
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    (folder / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "sub" / "c.jpg")
    return folder


FOLDER = _manifest_folder()


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True


@SETTINGS
@pytest.mark.filterwarnings("ignore:.*skipped")  # rows skipped, counted: expected here
@given(lines)
def test_a_jsonl_manifest_gives_items_and_counted_problems_for_any_lines(content):
    path = FOLDER / "m.jsonl"
    path.write_bytes(b"\n".join(content) + b"\n")
    counted = [raw for raw in content if raw.strip()]
    try:
        catalog = read_manifest(path)
    except ManifestError as err:
        assert counted and not any(_parses(raw) for raw in counted), err  # only a file with no readable line
        return
    assert len(catalog.items) + len(catalog.problems) == len(counted)  # every line: an item or a problem
    assert len({item.id for item in catalog.items}) == len(catalog.items)
    for item in catalog.items:
        assert item.caption and item.caption == item.caption.strip() and item.split in SPLITS
        assert item.image.is_file()


@SETTINGS
@pytest.mark.filterwarnings("ignore:.*skipped")
@given(st.lists(st.lists(text, min_size=1, max_size=4), max_size=8), st.lists(text, min_size=1, max_size=4))
def test_a_csv_manifest_gives_items_and_counted_problems_for_any_cells(body, header):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(body)
    path = FOLDER / "m.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    try:
        catalog = read_manifest(path)
    except ManifestError:
        return
    assert len(catalog.items) + len(catalog.problems) == len(list(csv.DictReader(io.StringIO(buffer.getvalue()))))
    assert all(item.caption and item.split in SPLITS and item.image.is_file() for item in catalog.items)


# ---------------------------------------------------------------- config overrides


def _leaves(tree: dict, where: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_leaves(value, f"{where}{key}."))
        else:
            out[f"{where}{key}"] = value
    return out


LEAVES = _leaves(DEFAULTS)
values = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | text \
    | st.lists(st.floats(-2, 2), max_size=3)


def _at(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@SETTINGS
@given(st.sampled_from(sorted(LEAVES)) | text, values)
def test_an_override_is_applied_as_given_or_refused_with_a_config_error(key, value):
    override = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    try:
        config = load_config(None, [override])
    except ConfigError:
        return  # the one error the command line turns into a one-line message
    parsed = next(iter(_leaves(parse_override(override)).values()))
    assert key in LEAVES
    assert _at(config, key) == parsed or (isinstance(parsed, float) and math.isnan(parsed))
    load_config(None, [override, override])  # applying it twice changes nothing more


@SETTINGS
@given(st.sampled_from(sorted(k for k, v in LEAVES.items() if isinstance(v, (bool, int, float, str)) and v is not None)))
def test_every_default_given_back_as_an_override_leaves_the_defaults(key):
    value = LEAVES[key]
    assert load_config(None, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]) \
        == load_config(None, [])


# ---------------------------------------------------------------- search parameters


@pytest.fixture(scope="module")
def searchable(untrained_checkpoint, tiny_catalog):
    import vislang
    from vislang.data import read_catalog
    from vislang.search import Index

    model = vislang.load(untrained_checkpoint, device="cpu")
    catalog = read_catalog(tiny_catalog)
    return Index.build(model, catalog, progress=False, gpu=False), catalog


KINDS = (None, "room", "product", "rooms", "products", "chair", "")


@settings(max_examples=60, deadline=None)
@given(st.lists(text, min_size=1, max_size=3), st.integers(-5, 5000), st.sampled_from(KINDS),
       st.floats(allow_nan=True) | st.none(), st.booleans())
def test_a_search_returns_the_best_k_of_its_kind_or_refuses_the_query(searchable, texts, k, kind, text_weight, with_photo):
    from vislang.search import SearchError
    from vislang.search.query import MAX_K

    index, catalog = searchable
    photo = catalog.select(None, "product")[0].image
    extra = {} if text_weight is None else {"text_weight": text_weight}
    try:
        results = index.search(texts=texts, images=[photo] * len(texts) if with_photo else None, k=k, kind=kind, **extra)
    except SearchError as err:  # the user's to fix: each reason the refusal gives holds
        message = str(err)
        assert (not 1 <= k <= MAX_K or any(not t.strip() for t in texts) or "kind" in message
                or (text_weight is not None and not 0 <= text_weight <= 1)), message
        return
    wanted = {"rooms": "room", "products": "product"}.get(kind, kind)
    pool = [item for item in catalog if wanted is None or item.kind == wanted]
    assert 1 <= k <= MAX_K and all(t.strip() for t in texts) and len(results) == len(texts)
    for hits in results:
        assert len(hits) == min(k, len(pool))
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True) and all(-1.001 <= s <= 1.001 for s in scores)  # cosines
        assert all(hit.kind == (wanted or hit.kind) for hit in hits)
        assert len({(hit.kind, hit.id) for hit in hits}) == len(hits)
