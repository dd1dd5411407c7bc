"""The table `hotserve optimize` prints: one row per model (the parent first)."""

from __future__ import annotations


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / 2**20:.2f} MiB"


def table(rows: list[dict], batches: list[int], metric: str) -> str:
    """rows: name, size, params, latency {batch: Latency}, speedup, metric, change, verdict."""
    head = ["variant", "size", "params"]
    for b in batches:
        head += [f"p50 b{b} ms", f"p99 b{b} ms"]
    head += ["speedup", metric, "change", "verdict"]
    body = []
    for r in rows:
        line = [r["name"], _size(r["size"]) if r.get("size") is not None else "-",
                f"{r['params']:,}" if r.get("params") is not None else "-"]
        lat = r.get("latency") or {}
        for b in batches:
            x = lat.get(b)
            line += [f"{x.p50_ms:.3f}" if x else "-", f"{x.p99_ms:.3f}" if x else "-"]
        line += [f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-",
                 f"{r['metric']:.4f}" if r.get("metric") is not None else "-",
                 f"{r['change']:+.4f}" if r.get("change") is not None else "-",
                 r.get("verdict", "")]
        body.append(line)
    widths = [max(len(h), *(len(l[i]) for l in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in body])
