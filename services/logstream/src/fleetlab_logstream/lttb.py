"""Largest-triangle-three-buckets downsampling (Steinarsson, 2013), as FGLab's charts used.

Keeps the first and the last point, and from each of ``threshold - 2`` buckets in between the
point that makes the largest triangle with the point kept before it and the average of the
next bucket: peaks and troughs survive, flat stretches thin out.
"""

from __future__ import annotations

from collections.abc import Sequence


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """Indices of the points to keep (ascending), at most ``threshold`` of them."""
    n = len(xs)
    if len(ys) != n:
        raise ValueError("xs and ys differ in length")
    if threshold >= n or n <= 2:
        return list(range(n))
    if threshold < 3:
        return [0, n - 1][:threshold] if threshold > 0 else []
    keep = [0]
    every = (n - 2) / (threshold - 2)
    a = 0
    for i in range(threshold - 2):
        # The next bucket's average point.
        start = int((i + 1) * every) + 1
        end = min(int((i + 2) * every) + 1, n)
        count = end - start
        avg_x = sum(xs[start:end]) / count
        avg_y = sum(ys[start:end]) / count
        # This bucket's point with the largest triangle.
        lo = int(i * every) + 1
        hi = int((i + 1) * every) + 1
        ax, ay = xs[a], ys[a]
        best, best_area = lo, -1.0
        for j in range(lo, hi):
            area = abs((ax - avg_x) * (ys[j] - ay) - (ax - xs[j]) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        keep.append(best)
        a = best
    keep.append(n - 1)
    return keep
