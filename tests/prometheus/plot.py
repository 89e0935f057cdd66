"""Draws what the dashboard's key panels showed during tests/prometheus/run.sh, from the real
Prometheus's data (query_range), as an SVG: provider calls by outcome, the error ratio, the
circuit state, and when each alert was firing.   python3 plot.py PROMETHEUS_URL START END OUT"""
import json
import sys
import urllib.parse
import urllib.request

url, start, end, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]


def query(expr):
    args = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{args}") as answer:
        return json.load(answer)["data"]["result"]


panels = [
    ("Provider calls by outcome (calls/s, dodo)",
     'sum by (outcome, status_class) (rate(checkout_gateway_upstream_requests_total[15s]))', "outcome"),
    ("Upstream error ratio (recording rule, 5 m)",
     'checkout_gateway:upstream_error_ratio:rate5m', None),
    ("Circuit state (0 closed, 1 half-open, 2 open)", 'checkout_gateway_circuit_state', None),
    ("Alerts firing", 'ALERTS{alertstate="firing"}', "alertname"),
]
colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
width, height, left, right, top = 900, 150, 70, 20, 30
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{len(panels) * (height + top) + 30}" '
       'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>']
for index, (title, expr, label) in enumerate(panels):
    y0 = index * (height + top) + top
    series = query(expr)
    values = [float(v) for s in series for _, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
    if expr.startswith("ALERTS"):
        peak = len(series) or 1
    else:
        peak = max(values + [1e-9]) * 1.1
    svg.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
    svg.append(f'<rect x="{left}" y="{y0}" width="{width - left - right}" height="{height}" fill="none" stroke="#999"/>')
    svg.append(f'<text x="{left - 6}" y="{y0 + 10}" text-anchor="end">{peak:.3g}</text>')
    svg.append(f'<text x="{left - 6}" y="{y0 + height}" text-anchor="end">0</text>')
    x = lambda t: left + (float(t) - start) / (end - start) * (width - left - right)
    for n, s in enumerate(series):
        colour = colours[n % len(colours)]
        name = s["metric"].get(label, "") if label else s["metric"].get("account", "")
        if s["metric"].get("status_class", "none") != "none":
            name += " " + s["metric"]["status_class"]
        if expr.startswith("ALERTS"):
            # One band per alert: where it was firing.
            band_y = y0 + 10 + n * (height - 20) / max(len(series), 1)
            band_h = (height - 20) / max(len(series), 1) - 6
            for t, _ in s["values"]:
                svg.append(f'<rect x="{x(t):.1f}" y="{band_y:.1f}" width="{2 / (end - start) * (width - left - right) + 0.5:.1f}" height="{band_h:.1f}" fill="{colour}"/>')
            svg.append(f'<text x="{left + 6}" y="{band_y + band_h / 2 + 4:.1f}">{name}</text>')
            continue
        points = " ".join(f"{x(t):.1f},{y0 + height - float(v) / peak * height:.1f}"
                          for t, v in s["values"] if v not in ("NaN", "+Inf", "-Inf"))
        svg.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        svg.append(f'<text x="{width - right - 6}" y="{y0 + 14 + 14 * n}" text-anchor="end" fill="{colour}">{name}</text>')
bottom = len(panels) * (height + top) + 15
svg.append(f'<text x="{left}" y="{bottom}">0 s</text>')
svg.append(f'<text x="{width - right}" y="{bottom}" text-anchor="end">{end - start:.0f} s (provider down, then healed)</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg))
