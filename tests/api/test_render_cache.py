"""The recent on-demand renders: an LRU under a byte budget."""

from __future__ import annotations

from api.render_cache import RecentRenders


def test_least_recently_used_goes_first() -> None:
    cache = RecentRenders(budget=10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # a is now the most recent
    cache.put("c", b"cccc")  # 12 bytes > 10: b goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"aaaa", None, b"cccc")
    assert (len(cache), cache.size) == (2, 8)


def test_replacing_a_key_counts_once() -> None:
    cache = RecentRenders(budget=10)
    cache.put("a", b"aaaa")
    cache.put("a", b"aaaaaa")
    assert (len(cache), cache.size, cache.get("a")) == (1, 6, b"aaaaaa")


def test_larger_than_the_budget_is_not_kept() -> None:
    cache = RecentRenders(budget=10)
    cache.put("a", b"aaaa")
    cache.put("big", b"x" * 11)
    assert (cache.get("big"), cache.get("a")) == (None, b"aaaa")
    nothing = RecentRenders(budget=0)
    nothing.put("a", b"a")
    assert (nothing.get("a"), len(nothing)) == (None, 0)
