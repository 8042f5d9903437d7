"""Near-duplicate search: validation/test images whose 256-bit perceptual hash is within a few bits of a
training image's.

Comparing every query with every training hash grows with the product of the two (quadratic in the
dataset), which turns the single plan task into the bottleneck at ImageNet scale. Multi-index hashing
finds exactly the same answers while looking at a few candidates per query: cut the hash into T + 1
disjoint parts; a training hash within T bits of the query differs in at most T bits, so by pigeonhole
it equals the query exactly on at least one part. Sorted copies of each part's values then give, by
binary search, every training hash that agrees with the query on a part; each candidate is verified by
the exact Hamming distance, and the nearest within T is kept (ties: the lowest training index, as the
brute force). Identical training hashes are indexed once. Where the parts are too narrow to be
selective, or a dataset puts too many training hashes on the same part values (blank backgrounds, a
pathological set), the blockwise brute force (`nearest`, also the tests' oracle) takes over for that
query chunk, so the worst case costs about what the brute force costs.

Memory: the index holds 32 bytes per unique training hash plus, per hash and part, its key (4 or 8
bytes) and position (4), linear like the manifest rows; queries go through in chunks, and nothing is
ever queries x training hashes.
"""
from __future__ import annotations

QUERY_CHUNK, TRAIN_CHUNK = 512, 8192
"""Brute force: 512 x 8,192 distances (16 MB) at a time, whatever the number of images."""

INDEX_QUERY_CHUNK = 4096
"""Queries looked up together in the index: large enough to amortize numpy's per-call cost over many
binary searches, small enough that the candidate pairs stay a few MB."""

MIN_PART_BITS = 10
"""Narrowest part for which the index is built (thresholds up to 24 of 256 bits). A part of w bits splits
uniformly random hashes into 2^w buckets, so each query draws about (T + 1) n / 2^w candidates against
the brute force's n pairs: at 10 bits the index still beats the brute force on random hashes, at 8 bits
it is slower (profiled), and real images' hashes are less uniform, never more. Above, the brute force
does the whole search."""

PAIR_COST = 20
"""A verified candidate costs about as much as this many brute-force pairs (gather, XOR, popcount and
the per-query minimum, against one 257-term row of a float32 matrix product; profiled on random and
Fashion-MNIST hashes): a query chunk whose candidates outnumber (queries x unique training hashes) /
PAIR_COST goes to the brute force, so a dataset whose parts are not selective (many near-blank images)
costs what the brute force costs, not more."""

MAX_PAIRS = 1 << 18
"""Most candidate pairs held at once (a few MB of indices, gathered words and distances); a chunk with
more is verified in batches of whole queries, so memory stays bounded whatever the data. Small on
purpose: the arrays stay in cache and are not fresh pages the kernel must fault in, which made each
candidate several times slower at 2M pairs (profiled)."""

KEY_BITS = 64
"""A part wider than this (thresholds of 0 to 2) is keyed on its first 64 bits: equal parts have equal
prefixes, so no candidate is lost, and 64 bits are selective enough."""


def near_duplicates(rows: list[dict], splits: dict[str, list[int]], max_distance: int) -> list[dict]:
    """Validation/test images whose perceptual hash is within `max_distance` bits of a training image's.

    Exact copies never get here (ingest keeps one per content); these are re-encodings, resizes and
    light edits of the same picture, which inflate test scores when they straddle the split. Each names
    its nearest training image (ties: the first in the training split's order).
    """
    if max_distance < 0 or not splits["train"]:
        return []
    index = HashIndex(hash_words(rows, splits["train"]), max_distance)
    found = []
    for split in ("validation", "test"):
        idx = splits[split]
        for start in range(0, len(idx), INDEX_QUERY_CHUNK):
            chunk = idx[start:start + INDEX_QUERY_CHUNK]
            best, dist = index.search(hash_words(rows, chunk))
            for i, b, d in zip(chunk, best, dist):
                if b >= 0:
                    found.append({"location": rows[i]["location"], "split": split, "label": rows[i]["label"],
                                  "train_location": rows[splits["train"][b]]["location"],
                                  "train_label": rows[splits["train"][b]]["label"], "distance": int(d)})
    return found


def hash_words(rows: list[dict], idx: list[int]):
    """The rows' dHashes as four big-endian uint64 words each (n x 4): 32 bytes a hash, where one byte per
    bit would take 256."""
    import numpy as np

    packed = np.frombuffer(b"".join(bytes.fromhex(rows[i]["dhash"]) for i in idx), dtype=">u8")
    return packed.reshape(len(idx), 4).astype(np.uint64)


def hash_bits(rows: list[dict], idx: list[int]):
    """The rows' dHashes as one 0/1 byte per bit (n x 256)."""
    return words_to_bits(hash_words(rows, idx))


def words_to_bits(words):
    """(n x 4) uint64 words -> (n x 256) 0/1 bytes, most significant bit of the first word first."""
    import numpy as np

    return np.unpackbits(words.astype(">u8").view(np.uint8).reshape(len(words), 32), axis=1)


def distances(a, b):
    """Hamming distances between the rows of two (n x 4) uint64 arrays, pairwise by row. Word by word:
    summing a 4-wide axis is several times slower than three additions of columns (profiled); two
    words' counts (at most 128) still fit the popcount's uint8."""
    import numpy as np

    c = np.bitwise_count(a ^ b)
    return (c[:, 0] + c[:, 1]).astype(np.int64) + (c[:, 2] + c[:, 3])


def nearest(query, train):
    """(index of the nearest training hash, its Hamming distance) per query hash; ties go to the first.

    The brute force over every pair, in blocks, for bit arrays (n x 256): the fallback of `HashIndex`
    and the tests' oracle. Hamming distance as |a| + |b| - 2 a.b over the bits. Per query |a| is a
    constant, so the nearest is the smallest |b| - 2 a.b: one float32 matrix product per block with
    each training hash as (-2 b, |b|) against the query as (a, 1), exact since every term is a small
    integer. On all 70,000 Fashion-MNIST images this is several times faster than XOR and popcount over
    every pair, and faster than adding |a| + |b| as two more passes over each block (profiled).
    """
    import numpy as np

    q = np.hstack([query.astype(np.float32), np.ones((len(query), 1), np.float32)])
    q_ones = query.sum(1, dtype=np.int64)
    best = np.zeros(len(q), dtype=np.int64)
    dist = np.full(len(q), np.inf, dtype=np.float32)
    rows = np.arange(len(q))
    for start in range(0, len(train), TRAIN_CHUNK):
        t = train[start:start + TRAIN_CHUNK]
        t = np.hstack([-2.0 * t.astype(np.float32), t.sum(1, dtype=np.float32)[:, None]])
        for q_start in range(0, len(q), QUERY_CHUNK):
            sl = slice(q_start, q_start + QUERY_CHUNK)
            d = q[sl] @ t.T
            arg = d.argmin(1)
            got = d[rows[:len(d)], arg]
            closer = got < dist[sl]  # strictly: an earlier block keeps a tie
            best[sl][closer], dist[sl][closer] = arg[closer] + start, got[closer]
    return best, np.rint(dist).astype(np.int64) + q_ones


def partitions(max_distance: int) -> list[list[list[int]]]:
    """Ways to cut the hash into T + 1 disjoint parts (as bit positions), for `HashIndex` to choose from.

    Each deals the bits round-robin to the parts in some order of the 16 x 16 grid (stored row by row),
    so every part is spread over the whole image: a contiguous part would be a few image rows, which flat
    backgrounds leave all zero for nearly every image. Row order alone puts each part in a few columns
    when T + 1 shares factors with 16 (at T = 15, one column each: the border columns match almost
    every image), so two orders that shift each row's start (by 1 and by 3 columns) come with it; which
    is most selective depends on the images (on Fashion-MNIST each wins at some thresholds, and row order
    alone draws over ten times the candidates of the others at T = 15).
    """
    m = max_distance + 1
    orders = [list(range(256))] + [[16 * (k // 16) + (k + shift * (k // 16)) % 16 for k in range(256)]
                                   for shift in (1, 3)]
    return [[order[j::m] for j in range(m)] for order in orders]


SAMPLE = 16384
"""Training hashes the parts are chosen on: enough to rank the partitions, a fraction of the build's cost."""


class HashIndex:
    """The training hashes, indexed for `search`: deduplicated (identical hashes keep the first index, so
    a thousand blank images make one candidate, not a thousand) and, per part, sorted by the part's
    value."""

    def __init__(self, train_words, max_distance: int):
        import numpy as np

        self.max_distance = max_distance
        n = len(train_words)
        if n:
            order = np.lexsort(train_words.T[::-1])  # stable: among identical hashes the first index leads
            s = train_words[order]
            first = np.ones(n, bool)
            first[1:] = (s[1:] != s[:-1]).any(1)
            keep = np.sort(order[first])
        else:
            keep = np.zeros(0, np.int64)
        self.words = train_words[keep]
        self.train_index = keep  # unique hash -> its first position in the training split
        self.span = n + 1  # (distance, index) as one int64: distance * span + index
        options = partitions(max_distance)
        self.parts = options[0]
        self.indexed = min(map(len, self.parts)) >= MIN_PART_BITS and len(self.words) > 0
        if self.indexed:
            self.parts = min(options, key=self._collisions)
        self._bits = None
        self.keys, self.orders = [], []
        if self.indexed:
            for k in self._keys(self.words):
                o = np.argsort(k, kind="stable").astype(np.int32 if len(k) < 2 ** 31 else np.int64)
                self.orders.append(o)
                self.keys.append(k[o])

    def _collisions(self, parts) -> int:
        """Pairs of sampled training hashes equal on some part (counted per part): proportional to the
        candidates a query from the same images draws, which the index should keep few."""
        import numpy as np

        sample = self.words[::max(1, len(self.words) // SAMPLE)]
        total = 0
        for k in self._keys(sample, parts):
            _, counts = np.unique(k, return_counts=True)
            total += int((counts.astype(np.int64) ** 2).sum())
        return total

    def _keys(self, words, parts=None, block: int = 8192):
        """Each part's value per hash (one array per part), in blocks of hashes to bound memory.

        As one float64 matrix product of the bits with each part's powers of two (a 32-bit half of the
        key per column, exact in float64): several times faster than gathering each part's bit columns
        and packing them (profiled; it was most of the index's build)."""
        import numpy as np

        parts = self.parts if parts is None else parts
        weights = np.zeros((256, 2 * len(parts)))
        for p, cols in enumerate(parts):
            for k, bit in enumerate(cols[:KEY_BITS]):
                weights[bit, 2 * p + k // 32] = 2.0 ** (k % 32)
        dtypes = [np.uint32 if len(cols) <= 32 else np.uint64 for cols in parts]
        out = [np.empty(len(words), dt) for dt in dtypes]
        for start in range(0, len(words), block):
            halves = (words_to_bits(words[start:start + block]).astype(np.float64) @ weights).astype(np.uint64)
            for p, dt in enumerate(dtypes):
                out[p][start:start + block] = (halves[:, 2 * p] | (halves[:, 2 * p + 1] << np.uint64(32))).astype(dt)
        return out

    def train_bits(self):
        if self._bits is None:
            self._bits = words_to_bits(self.words)
        return self._bits

    def search(self, query_words):
        """(training index, distance) of each query's nearest training hash within the threshold, ties to
        the lowest index; (-1, -1) where none is within it."""
        import numpy as np

        best = np.full(len(query_words), -1, np.int64)
        dist = np.full(len(query_words), -1, np.int64)
        if not len(query_words) or not len(self.words):
            return best, dist
        if not self.indexed:
            self._brute(query_words, best, dist)
            return best, dist
        self._search(query_words, best, dist)
        return best, dist

    def _brute(self, query_words, best, dist):
        b, d = nearest(words_to_bits(query_words), self.train_bits())
        hit = d <= self.max_distance
        best[hit], dist[hit] = self.train_index[b[hit]], d[hit]

    def _search(self, query_words, best, dist):
        """Look each query's parts up (one binary search per part for the whole chunk), then either hand
        the chunk to the brute force where that is cheaper, or verify the candidates in batches of whole
        queries of at most MAX_PAIRS pairs (a single query with more is one batch)."""
        import numpy as np

        lows, counts = [], []
        for k, qk in zip(self.keys, self._keys(query_words)):
            # in key order: each binary search starts where the last ended, in memory already cached
            by_key = np.argsort(qk)
            lo, hi = np.empty(len(qk), np.int64), np.empty(len(qk), np.int64)
            lo[by_key] = np.searchsorted(k, qk[by_key], "left")
            hi[by_key] = np.searchsorted(k, qk[by_key], "right")
            lows.append(lo)
            counts.append(hi - lo)
        per_query = np.sum(counts, axis=0)
        if int(per_query.sum()) * PAIR_COST > len(query_words) * len(self.words):
            self._brute(query_words, best, dist)
            return
        ends = np.cumsum(per_query)
        start = 0
        while start < len(query_words):
            done = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, done + MAX_PAIRS, "right")))
            sl = slice(start, stop)
            self._verify(query_words, start, [lo[sl] for lo in lows], [c[sl] for c in counts], best, dist)
            start = stop

    def _verify(self, query_words, start, lows, counts, best, dist):
        """Queries start, start + 1, ... (as many as `lows` has): every training hash equal to one of them
        on a part (its part's sorted run lows[p][i] ... + counts[p][i]), verified by the exact distance;
        the nearest within the threshold, the lowest training index on ties, is each query's answer."""
        import numpy as np

        q_parts, t_parts = [], []
        local = np.arange(len(lows[0]))
        for lo, cnt, o in zip(lows, counts, self.orders):
            n = int(cnt.sum())
            if not n:
                continue
            q_parts.append(np.repeat(local, cnt))
            t_parts.append(o[np.arange(n) - np.repeat(np.cumsum(cnt) - cnt - lo, cnt)])
        if not q_parts:
            return
        q = np.concatenate(q_parts)
        t = np.concatenate(t_parts)
        d = distances(np.take(query_words, q + start, axis=0), np.take(self.words, t, axis=0))
        ok = d <= self.max_distance
        q, t, d = q[ok], t[ok], d[ok]
        if not len(q):
            return
        # nearest first, then the lowest training index (one sortable number); per query the least wins
        span = self.span
        none = np.iinfo(np.int64).max
        key = np.full(len(local), none)
        np.minimum.at(key, q, d * span + self.train_index[t])
        hit = np.flatnonzero(key < none)
        best[hit + start], dist[hit + start] = key[hit] % span, key[hit] // span
