"""The near-duplicate search: the multi-index search finds exactly what the brute force over every pair
finds (the nearest training hash within the threshold, the lowest training index on ties, the same
distance), on generated sets with near-duplicates planted at every distance from 0 to the threshold + 2,
with ties, identical training hashes, pathological sets and empty splits."""
from __future__ import annotations

import random

import numpy as np
import pytest

from imgclf.components.preprocess import near_duplicates as nd

WIDEST = 256 // nd.MIN_PART_BITS - 1
"""The largest threshold the index serves; above it the brute force does it all."""
THRESHOLDS = (0, 1, 2, 3, 10, 15, WIDEST, WIDEST + 1, 40)
"""0 (one 256-bit part, keyed on 64 bits), 1-3 (parts wider than a key), the default 10, 15 (parts that
row order would put in single columns), the narrowest indexed parts, and too narrow parts."""


def words(bits):
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).reshape(len(bits), 4)


def flip(bits, k: int, rng):
    out = bits.copy()
    out[rng.choice(256, k, replace=False)] ^= 1
    return out


def generated(seed: int, threshold: int):
    """(train bits, query bits): random hashes of a random density, a query planted at every distance
    0..T+2 from a training hash, two training hashes at the same distance from a query (a tie), a run of
    identical blank training hashes, and unrelated queries."""
    rng = np.random.default_rng(seed)
    n_train = int(rng.integers(1, 120))
    density = rng.uniform(0.05, 0.5)
    train = [(rng.random(256) < density).astype(np.uint8) for _ in range(n_train)]
    query = []
    for d in range(threshold + 3):
        query.append(flip(train[int(rng.integers(0, n_train))], d, rng))
    for _ in range(3):  # ties: two training hashes, each d bits from the query, placed later in the split
        base = (rng.random(256) < density).astype(np.uint8)
        d = int(rng.integers(0, threshold + 2))
        train += [flip(base, d, rng), flip(base, d, rng)]
        query.append(base)
    if seed % 2:
        blank = np.zeros(256, np.uint8)
        at = sorted(rng.choice(len(train) + 1, 30))
        for i in reversed(at):
            train.insert(int(i), blank)
        query.append(flip(blank, int(rng.integers(0, threshold + 3)), rng))
    for _ in range(int(rng.integers(0, 10))):
        query.append((rng.random(256) < density).astype(np.uint8))
    order = rng.permutation(len(query))
    return np.array(train, np.uint8), np.array(query, np.uint8)[order]


def assert_same_as_brute_force(train, query, threshold, label):
    best, dist = nd.nearest(query, train) if len(train) else (np.zeros(0, int), np.full(len(query), 999))
    within = dist <= threshold
    got_best, got_dist = nd.HashIndex(words(train), threshold).search(words(query))
    np.testing.assert_array_equal(got_best >= 0, within, err_msg=label)
    np.testing.assert_array_equal(got_best[within], best[within], err_msg=label)
    np.testing.assert_array_equal(got_dist[within], dist[within], err_msg=label)
    np.testing.assert_array_equal(got_dist[~within], -1, err_msg=label)


@pytest.mark.unit
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_index_finds_what_brute_force_finds_at_every_distance(threshold):
    for seed in range(12):
        train, query = generated(seed, threshold)
        assert_same_as_brute_force(train, query, threshold, f"T={threshold} seed={seed}")


@pytest.mark.unit
@pytest.mark.parametrize("threshold", (0, 10, WIDEST))
def test_tiny_batches_and_forced_paths_give_the_same_answers(threshold, monkeypatch):
    """The same sets with the candidates verified in batches of single queries, then with every chunk sent
    to the brute force by the cost guard, then with the guard off (the index verifies everything)."""
    for setting in ({"MAX_PAIRS": 3}, {"PAIR_COST": 10 ** 9}, {"PAIR_COST": 0}):
        with monkeypatch.context() as m:
            for name, value in setting.items():
                m.setattr(nd, name, value)
            for seed in range(6):
                train, query = generated(100 + seed, threshold)
                assert_same_as_brute_force(train, query, threshold, f"T={threshold} {setting} seed={seed}")


@pytest.mark.unit
def test_each_path_is_taken_where_expected(monkeypatch):
    """Random hashes at the default threshold are answered by the index alone; a pathological set (every
    training hash blank but for a few bits, so each part matches almost everything) and a threshold whose
    parts are too narrow go to the brute force."""
    calls = []
    real = nd.nearest
    monkeypatch.setattr(nd, "nearest", lambda q, t: calls.append(len(q)) or real(q, t))
    rng = np.random.default_rng(3)
    train = (rng.random((2000, 256)) < 0.5).astype(np.uint8)
    query = np.array([flip(train[i], i % 13, rng) for i in range(200)])
    assert_same_as_brute_force(train, query, 10, "random")
    assert calls == [len(query)]  # only the oracle's own call

    calls.clear()
    sparse = np.zeros((2000, 256), np.uint8)
    for row in sparse:
        row[rng.choice(256, 3, replace=False)] = 1
    assert_same_as_brute_force(sparse, sparse[:300], 10, "pathological")
    assert len(calls) == 2  # the oracle and the fallback

    calls.clear()
    assert not nd.HashIndex(words(train), WIDEST + 1).indexed and nd.HashIndex(words(train), WIDEST).indexed
    assert_same_as_brute_force(train, query, WIDEST + 1, "narrow parts")
    assert len(calls) == 2


@pytest.mark.unit
def test_identical_training_hashes_are_one_candidate_and_the_first_wins():
    rng = np.random.default_rng(9)
    base = (rng.random(256) < 0.3).astype(np.uint8)
    other = (rng.random((50, 256)) < 0.3).astype(np.uint8)
    train = np.vstack([other[:20], np.repeat(base[None], 500, 0), other[20:]])
    index = nd.HashIndex(words(train), 10)
    assert len(index.words) == 51
    best, dist = index.search(words(np.array([base, flip(base, 4, rng)])))
    assert best.tolist() == [20, 20] and dist.tolist() == [0, 4]


@pytest.mark.unit
def test_empty_training_or_query_sets():
    rng = np.random.default_rng(1)
    some = (rng.random((5, 256)) < 0.4).astype(np.uint8)
    for threshold in (0, 10, 40):
        best, dist = nd.HashIndex(words(some[:0]), threshold).search(words(some))
        assert best.tolist() == [-1] * 5 and dist.tolist() == [-1] * 5
        best, dist = nd.HashIndex(words(some), threshold).search(words(some[:0]))
        assert len(best) == len(dist) == 0


@pytest.mark.unit
def test_brute_force_matches_xor_popcount_over_every_pair(monkeypatch):
    """The oracle itself: generated hash sets (random, planted near copies, duplicated training hashes for
    ties, all-zero backgrounds) across training and query block boundaries: the matrix-product search
    finds the same nearest training hash, first on ties, at the same distance as XOR and popcount."""
    rng = np.random.default_rng(11)
    monkeypatch.setattr(nd, "TRAIN_CHUNK", 7)
    monkeypatch.setattr(nd, "QUERY_CHUNK", 5)
    for case in range(20):
        n_train, n_query = int(rng.integers(1, 40)), int(rng.integers(1, 25))
        train = (rng.random((n_train, 256)) < rng.uniform(0.02, 0.5)).astype(np.uint8)
        if case % 3 == 0:
            train[rng.integers(0, n_train, n_train // 2)] = train[0]  # ties
        query = (rng.random((n_query, 256)) < 0.3).astype(np.uint8)
        planted = rng.integers(0, n_train, n_query)
        near = rng.random(n_query) < 0.6
        for q in np.flatnonzero(near):
            query[q] = train[planted[q]]
            query[q, rng.choice(256, int(rng.integers(0, 12)), replace=False)] ^= 1
        if case % 4 == 0:
            query[0] = 0
        best, dist = nd.nearest(query, train)
        every = (query[:, None, :] != train[None, :, :]).sum(-1)
        np.testing.assert_array_equal(best, every.argmin(1), err_msg=f"case {case}")
        np.testing.assert_array_equal(dist, every.min(1), err_msg=f"case {case}")
        np.testing.assert_array_equal(nd.words_to_bits(words(query)), query)


def brute_force_report(rows, splits, max_distance):
    """The plan's near-duplicates as the brute force found them before the index (the reference)."""
    if max_distance < 0 or not splits["train"]:
        return []
    train = nd.hash_bits(rows, splits["train"])
    found = []
    for split in ("validation", "test"):
        idx = splits[split]
        if not idx:
            continue
        best, dist = nd.nearest(nd.hash_bits(rows, idx), train)
        for i, b, d in zip(idx, best, dist):
            if d <= max_distance:
                found.append({"location": rows[i]["location"], "split": split, "label": rows[i]["label"],
                              "train_location": rows[splits["train"][b]]["location"],
                              "train_label": rows[splits["train"][b]]["label"], "distance": int(d)})
    return found


@pytest.mark.unit
def test_near_duplicates_report_is_the_brute_forces(monkeypatch):
    """Manifest rows in generated splits, with query chunks small enough to span several: the report (what
    the plan stores, and what drop_near_duplicates leaves out) is equal, entry for entry and in order."""
    monkeypatch.setattr(nd, "INDEX_QUERY_CHUNK", 16)
    r = random.Random(5)
    for case in range(16):
        threshold = r.choice((-1, 0, 2, 10, 10, WIDEST, 30))
        train, query = generated(200 + case, max(threshold, 0))
        hashes = [bytes(np.packbits(b)).hex() for b in np.vstack([train, query])]
        rows = [{"location": f"img-{i}.png", "label": r.choice("ab"), "dhash": h} for i, h in enumerate(hashes)]
        idx = list(range(len(rows)))
        train_idx = idx[:len(train)] if case % 8 else []
        rest = idx[len(train):]
        r.shuffle(rest)
        cut = r.randint(0, len(rest))
        splits = {"train": train_idx, "validation": rest[:cut], "test": rest[cut:]}
        want = brute_force_report(rows, splits, threshold)
        assert nd.near_duplicates(rows, splits, threshold) == want, f"case {case} T={threshold}"
        if threshold >= 0 and train_idx:
            assert {d["distance"] for d in want} >= set(range(min(threshold, 2) + 1)), f"case {case}"


@pytest.mark.unit
def test_every_partition_cuts_the_hash_into_threshold_plus_one_disjoint_parts():
    for threshold in range(257):
        for parts in nd.partitions(threshold):
            assert len(parts) == threshold + 1, threshold
            assert sorted(b for part in parts for b in part) == list(range(256)), threshold
            assert max(map(len, parts)) - min(map(len, parts)) <= 1, threshold


@pytest.mark.unit
def test_parts_avoid_blank_border_columns(monkeypatch):
    """Images on a flat background leave the hash's border columns zero. At T = 15 row order would make
    each part one column, and the border columns' parts would match every training hash; the index
    picks a cut that keeps the candidates few and answers without the brute force."""
    calls = []
    real = nd.nearest
    monkeypatch.setattr(nd, "nearest", lambda q, t: calls.append(len(q)) or real(q, t))
    rng = np.random.default_rng(4)
    train = (rng.random((3000, 16, 16)) < 0.4).astype(np.uint8)
    train[:, :, [0, 1, 14, 15]] = 0
    train = train.reshape(3000, 256)
    query = np.array([flip(train[i], i % 18, rng) for i in range(0, 3000, 10)])
    index = nd.HashIndex(words(train), 15)
    assert index._collisions(index.parts) * 20 < index._collisions(nd.partitions(15)[0])
    assert_same_as_brute_force(train, query, 15, "blank borders")
    assert calls == [len(query)]
