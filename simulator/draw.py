"""Draw a district: cables, meters by phase, collectors, the concentrator and the true links.

``draw(scenario, path, at=...)`` writes SVG or PNG (by the file suffix; PNG needs Pillow).
Links come from :func:`simulator.truth.truth` at time ``at``: by default each node's best link
towards a node one hop nearer the concentrator (the tree a perfect router would use), or every
usable link when there are at most ``max_links`` of them or ``all_links`` is set. Link colour
shows p of the reference read frame: green >= 0.9, orange >= 0.7, red below.
Phase colours follow the Chinese convention: A yellow, B green, C red; three-phase purple.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from simulator.scenario import Scenario
from simulator.truth import truth

__all__ = ["draw"]

PHASE_COLOURS = {"A": "#d4a800", "B": "#1a9b3c", "C": "#d62728", "ABC": "#7b3fb3"}
CABLE_COLOURS = {"underground": "#555555", "overhead": "#8c6d46", "service": "#aaaaaa"}
CABLE_WIDTH = {"underground": 2.0, "overhead": 2.0, "service": 1.0}


def _link_colour(p: float) -> str:
    return "#2ca02c" if p >= 0.9 else "#ff9f1a" if p >= 0.7 else "#e8251f"


class _Canvas:
    """Collects shapes in world metres and renders them as SVG or PNG."""

    def __init__(self, bounds: tuple[float, float, float, float], width: int = 1400) -> None:
        x0, y0, x1, y1 = bounds
        span = max(x1 - x0, y1 - y0, 20.0)
        self.margin, self.legend_h = 40, 120
        self.scale = (width - 2 * self.margin) / span
        self.x0, self.y1 = x0, y1
        self.w = width
        self.h = int((y1 - y0) * self.scale) + 2 * self.margin + self.legend_h
        self.items: list[tuple[Any, ...]] = []

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (self.margin + (x - self.x0) * self.scale, self.margin + (self.y1 - y) * self.scale)

    def line(self, a: tuple[float, float], b: tuple[float, float], colour: str, width: float,
             world: bool = True, opacity: float = 1.0) -> None:
        pa, pb = (self.px(*a), self.px(*b)) if world else (a, b)
        self.items.append(("line", pa, pb, colour, width, opacity))

    def dot(self, c: tuple[float, float], r: float, colour: str, shape: str = "circle", world: bool = True) -> None:
        self.items.append((shape, self.px(*c) if world else c, r, colour))

    def text(self, at: tuple[float, float], s: str, size: int = 13) -> None:
        self.items.append(("text", at, s, size))

    def svg(self) -> str:
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
               f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif">',
               f'<rect width="{self.w}" height="{self.h}" fill="white"/>']
        for it in self.items:
            if it[0] == "line":
                (ax, ay), (bx, by), c, w, op = it[1:]
                out.append(f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}" stroke="{c}" '
                           f'stroke-width="{w}" stroke-opacity="{op}"/>')
            elif it[0] == "circle":
                (x, y), r, c = it[1:]
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{c}" stroke="black" stroke-width="0.5"/>')
            elif it[0] == "square":
                (x, y), r, c = it[1:]
                out.append(f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{c}" '
                           'stroke="black" stroke-width="1"/>')
            elif it[0] == "star":
                (x, y), r, c = it[1:]
                pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in _star(x, y, r))
                out.append(f'<polygon points="{pts}" fill="{c}" stroke="black" stroke-width="1"/>')
            elif it[0] == "text":
                (x, y), s, size = it[1:]
                out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}">{_esc(s)}</text>')
        out.append("</svg>")
        return "\n".join(out)

    def png(self, path: Path) -> None:
        from PIL import Image, ImageDraw, ImageFont

        img = Image.new("RGB", (self.w, self.h), "white")
        d = ImageDraw.Draw(img, "RGBA")
        try:
            font = ImageFont.load_default(size=13)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        for it in self.items:
            if it[0] == "line":
                a, b, c, w, op = it[1:]
                rgb = tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))
                d.line([a, b], fill=(*rgb, int(255 * op)), width=max(1, round(w)))
            elif it[0] == "circle":
                (x, y), r, c = it[1:]
                d.ellipse([x - r, y - r, x + r, y + r], fill=c, outline="black")
            elif it[0] == "square":
                (x, y), r, c = it[1:]
                d.rectangle([x - r, y - r, x + r, y + r], fill=c, outline="black")
            elif it[0] == "star":
                (x, y), r, c = it[1:]
                d.polygon(_star(x, y, r), fill=c, outline="black")
            elif it[0] == "text":
                (x, y), s, _size = it[1:]
                d.text((x, y - 11), s, fill="black", font=font)
        img.save(path)


def _star(x: float, y: float, r: float) -> list[tuple[float, float]]:
    return [(x + (r if k % 2 == 0 else r / 2.2) * math.sin(k * math.pi / 5),
             y - (r if k % 2 == 0 else r / 2.2) * math.cos(k * math.pi / 5)) for k in range(10)]


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _nice_length(span_m: float) -> float:
    target = span_m / 5
    exp = 10 ** math.floor(math.log10(max(target, 1e-6)))
    for f in (5, 2, 1):
        if f * exp <= target:
            return f * exp
    return exp


def draw(scenario: Scenario, path: str | Path, at: str | float = "12:00", all_links: bool = False,
         max_links: int = 400, width: int = 1400, truth_data: dict[str, Any] | None = None) -> Path:
    """Draw the district to ``path`` (.svg or .png); returns the path."""
    path = Path(path)
    tr = truth_data or truth(scenario, at, registers=False)
    jpos = {j.id: (j.x, j.y) for j in scenario.junctions}
    xs = [p[0] for p in jpos.values()]
    ys = [p[1] for p in jpos.values()]
    cv = _Canvas((min(xs), min(ys), max(xs), max(ys)), width)
    for b in scenario.buildings:
        for a, c in (((b.x0, b.y0), (b.x1, b.y0)), ((b.x1, b.y0), (b.x1, b.y1)),
                     ((b.x1, b.y1), (b.x0, b.y1)), ((b.x0, b.y1), (b.x0, b.y0))):
            cv.line(a, c, "#6a8caf", 1.5)
    for s in scenario.segments:
        kind = scenario.cable(s.cable).kind
        cv.line(jpos[s.a], jpos[s.b], CABLE_COLOURS[kind], CABLE_WIDTH[kind])

    nodes = {n["address"]: n for n in tr["nodes"] if n["collector"] is None}
    links = tr["links"]
    if not all_links and len(links) > max_links:
        best: dict[str, dict[str, Any]] = {}
        for lk in links:
            a, b = nodes.get(lk["src"]), nodes.get(lk["dst"])
            if a and b and a["hops"] is not None and b["hops"] is not None and b["hops"] == a["hops"] - 1:
                if lk["src"] not in best or lk["p"] > best[lk["src"]]["p"]:
                    best[lk["src"]] = lk
        links = list(best.values())
        shown = "best link one hop nearer the concentrator"
    else:
        shown = "all usable links"
    for lk in sorted(links, key=lambda x: x["p"]):
        a, b = nodes[lk["src"]], nodes[lk["dst"]]
        cv.line((a["x"], a["y"]), (b["x"], b["y"]), _link_colour(lk["p"]), 1.2, opacity=0.55)

    # Several meters at one junction (meter rooms) are fanned out around it so they stay visible.
    at_j: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for n in tr["nodes"]:
        if n["kind"] == "meter":
            at_j.setdefault((n["x"], n["y"]), []).append(n)
    for (x, y), group in at_j.items():
        px, py = cv.px(x, y)
        for k, n in enumerate(group):
            if len(group) == 1:
                cx, cy = px, py
            else:
                ang, rad = 2.4 * k, 3.0 * math.sqrt(k + 1)
                cx, cy = px + rad * math.cos(ang), py + rad * math.sin(ang)
            colour = PHASE_COLOURS[n["phase"]] if n["up"] else "#cccccc"
            cv.dot((cx, cy), 3.5, colour, world=False)
    for n in tr["nodes"]:
        if n["kind"] == "collector":
            cv.dot((n["x"], n["y"]), 6, "#1f77b4", "square")
    cco = next(n for n in tr["nodes"] if n["kind"] == "concentrator")
    cv.dot((cco["x"], cco["y"]), 12, "#ffdd00", "star")

    # Legend and scale bar under the map.
    top = cv.h - cv.legend_h + 20
    m = cv.margin
    cv.text((m, top), f"{scenario.name} ({scenario.channel}) at {tr['at']}: "
            f"{sum(1 for n in tr['nodes'] if n['kind'] == 'meter')} meters; links: {shown}")
    x = m
    for label, c in (("phase A", "A"), ("phase B", "B"), ("phase C", "C"), ("three-phase", "ABC")):
        cv.dot((x + 5, top + 25), 5, PHASE_COLOURS[c], world=False)
        cv.text((x + 14, top + 30), label)
        x += 110
    cv.dot((x + 5, top + 25), 6, "#1f77b4", "square", world=False)
    cv.text((x + 14, top + 30), "collector")
    x += 100
    cv.dot((x + 8, top + 25), 10, "#ffdd00", "star", world=False)
    cv.text((x + 20, top + 30), "concentrator")
    x = m
    for label, p in (("p >= 0.9", 0.95), ("0.7 <= p < 0.9", 0.8), ("0.5 <= p < 0.7", 0.6)):
        cv.line((x, top + 55), (x + 30, top + 55), _link_colour(p), 3, world=False)
        cv.text((x + 36, top + 60), label)
        x += 150
    for label, kind in (("main cable", "underground"), ("overhead", "overhead"), ("service", "service")):
        cv.line((x, top + 55), (x + 30, top + 55), CABLE_COLOURS[kind], CABLE_WIDTH[kind] + 1, world=False)
        cv.text((x + 36, top + 60), label)
        x += 120
    span = (cv.w - 2 * m) / cv.scale
    bar = _nice_length(span)
    y = top + 85
    cv.line((m, y), (m + bar * cv.scale, y), "#000000", 3, world=False)
    cv.line((m, y - 5), (m, y + 5), "#000000", 2, world=False)
    cv.line((m + bar * cv.scale, y - 5), (m + bar * cv.scale, y + 5), "#000000", 2, world=False)
    cv.text((m + bar * cv.scale + 8, y + 5), f"{bar:g} m")

    if path.suffix.lower() == ".png":
        cv.png(path)
    else:
        path.write_text(cv.svg(), encoding="utf-8")
    return path
