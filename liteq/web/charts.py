"""Per-queue charts, computed on the server and drawn as inline SVG (no script).

For each queue: throughput (tasks finished done or failed per bucket) and run time
(mean and longest finished_at - started_at per bucket), over the last MINUTES,
from Backend.queue_buckets() (a range scan of the index of finished tasks).
"""

import math
from typing import Any

MINUTES = 30
BUCKET = 60.0
WIDTH, HEIGHT = 300.0, 72.0       # the SVG's viewBox
TOP, BOTTOM = 12.0, 2.0           # room for the scale label above the bars


def queue_series(store: Any, t: float, minutes: int = MINUTES,
                 bucket: float = BUCKET) -> dict[str, list[dict[str, Any]]]:
    """{queue: [{t, done, failed, mean, max}] oldest first}; the last slot is the
    current, partial bucket. mean and max are seconds (None: nothing timed)."""
    since = math.floor(t / bucket) * bucket - (minutes - 1) * bucket
    out: dict[str, list[dict[str, Any]]] = {}
    for row in store.queue_buckets(since, bucket):
        series = out.setdefault(row["queue"], [
            {"t": since + i * bucket, "done": 0, "failed": 0, "mean": None, "max": None}
            for i in range(minutes)])
        slot = int(row["slot"])
        if not 0 <= slot < minutes:
            continue
        p = series[slot]
        p["done"], p["failed"] = int(row["done"] or 0), int(row["failed"] or 0)
        if row["timed"]:
            p["mean"] = float(row["run_sum"]) / int(row["timed"])
            p["max"] = float(row["run_max"])
    return out


def _bars(values: list[float], peak: float, classes: list[str],
          tips: list[str], base: list[float] | None = None) -> list[dict[str, Any]]:
    slot = WIDTH / max(1, len(values))
    plot = HEIGHT - TOP - BOTTOM
    out: list[dict[str, Any]] = []
    for i, v in enumerate(values):
        if v <= 0:
            continue
        below = base[i] if base else 0.0
        h = max(1.0, plot * v / peak)
        y = HEIGHT - BOTTOM - plot * below / peak - h
        out.append({"x": round(i * slot + slot * 0.14, 2), "y": round(y, 2),
                    "w": round(slot * 0.72, 2), "h": round(h, 2), "cls": classes[i],
                    "tip": tips[i]})
    return out


def throughput_chart(series: list[dict[str, Any]], hhmm: Any) -> dict[str, Any]:
    """SVG geometry: stacked bars of done (below) and failed (above) per bucket."""
    peak = max([p["done"] + p["failed"] for p in series] + [1])
    tips = [f"{hhmm(p['t'])}: {p['done']} done, {p['failed']} failed" for p in series]
    done = [float(p["done"]) for p in series]
    bars = _bars(done, peak, ["bar-done"] * len(series), tips)
    bars += _bars([float(p["failed"]) for p in series], peak,
                  ["bar-failed"] * len(series), tips, base=done)
    return {"bars": bars, "label": f"max {peak}/min", "width": WIDTH, "height": HEIGHT,
            "total": sum(p["done"] + p["failed"] for p in series)}


def runtime_chart(series: list[dict[str, Any]], hhmm: Any, fmt: Any) -> dict[str, Any]:
    """SVG geometry: the mean run time per bucket as bars, the longest as a tick."""
    peak = max([p["max"] or 0.0 for p in series] + [0.001])
    tips = [f"{hhmm(p['t'])}: mean {fmt(p['mean'])}, longest {fmt(p['max'])}"
            if p["mean"] is not None else f"{hhmm(p['t'])}: nothing finished"
            for p in series]
    bars = _bars([p["mean"] or 0.0 for p in series], peak, ["bar-mean"] * len(series), tips)
    slot = WIDTH / max(1, len(series))
    plot = HEIGHT - TOP - BOTTOM
    ticks = [{"x1": round(i * slot + slot * 0.1, 2), "x2": round(i * slot + slot * 0.9, 2),
              "y": round(HEIGHT - BOTTOM - plot * p["max"] / peak, 2), "tip": tips[i]}
             for i, p in enumerate(series) if p["max"] is not None]
    timed = [p["mean"] for p in series if p["mean"] is not None]
    return {"bars": bars, "ticks": ticks, "label": f"max {fmt(peak)}", "width": WIDTH,
            "height": HEIGHT, "any": bool(timed)}


def queue_charts(store: Any, t: float, hhmm: Any, fmt: Any) -> list[dict[str, Any]]:
    """[{queue, throughput, runtime}] for every queue that finished a task lately."""
    return [{"queue": q, "throughput": throughput_chart(s, hhmm),
             "runtime": runtime_chart(s, hhmm, fmt)}
            for q, s in sorted(queue_series(store, t).items())]
