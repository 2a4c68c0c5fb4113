#!/usr/bin/python3
"""Checks a ppctl report page as headless Chromium drew it.

  check_report.py dom DOM.html EXPECTED_RESULTS [OPS_SUFFIX]
      every chart section drew (data-drawn=true, data-points > 0) with the expected number of
      series (results x fields), and its y-axis ticks cover the data: the top tick value >= the
      data's maximum, its label formatted as report.js formats it (OPS_SUFFIX, e.g. "M", must end
      the top label of the page-ops chart).
  check_report.py png SCREENSHOT.png MIN_FRACTION
      the screenshot is not blank: at least MIN_FRACTION of its pixels are not white, and some are
      the first series colour (#1f77b4, the charts' lines).
Only the standard library: the PNG is decoded with zlib.
"""
import html
import json
import re
import struct
import sys
import zlib

# Fields drawn per result by each chart of report.js, by the start of its title.
FIELDS = {"Page operations": 1, "RPC latency": 2, "Pages in flight": 2, "I/O page-table": 1}


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def attrs(tag):
    return {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', tag)}


def check_dom(path, results, ops_suffix):
    dom = open(path, encoding="utf-8").read()
    charts = [attrs(t) for t in re.findall(r'<section class="pp-chart"[^>]*>', dom)]
    if len(charts) != len(FIELDS):
        fail(f"{len(charts)} charts in the page, expected {len(FIELDS)}")
    for c in charts:
        title = c.get("data-title", "?")
        fields = next((n for k, n in FIELDS.items() if title.startswith(k)), None)
        if fields is None:
            fail(f"unexpected chart '{title}'")
        if c.get("data-drawn") != "true":
            fail(f"chart '{title}' did not draw: {c}")
        if int(c["data-points"]) <= 0:
            fail(f"chart '{title}' has no points")
        if int(c["data-series"]) != fields * results:
            fail(f"chart '{title}': {c['data-series']} series, expected {fields * results}")
        ymax = float(c["data-y-max"])
        values = json.loads(c["data-y-tick-values"])
        labels = json.loads(c["data-y-ticks"])
        if not values or len(values) != len(labels):
            fail(f"chart '{title}': ticks {values} / labels {labels}")
        if max(values) < ymax:
            fail(f"chart '{title}': top tick {max(values)} is below the data's maximum {ymax}")
        if min(values) != 0:
            fail(f"chart '{title}': the y axis does not start at 0: {values}")
        top = labels[values.index(max(values))]
        if title.startswith("Page operations") and ops_suffix and not top.endswith(ops_suffix):
            fail(f"chart '{title}': top tick label '{top}' does not end in '{ops_suffix}'")
        if title.startswith("I/O page-table") and not re.search(r"(B|KiB|MiB|GiB)$", top):
            fail(f"chart '{title}': top tick label '{top}' is not in bytes")
        if title.startswith("RPC latency") and not re.search(r"(µs|ms| s)$", top):
            fail(f"chart '{title}': top tick label '{top}' is not a duration")
        print(f"ok: '{title}': {c['data-series']} series, {c['data-points']} points, "
              f"max {ymax:g}, ticks {labels}")


def png_pixels(path):
    """(width, height, bytes per pixel, rows of raw bytes) of an 8-bit RGB or RGBA PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path} is not a PNG")
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            if depth != 8 or ctype not in (2, 6):
                fail(f"{path}: PNG depth {depth} colour type {ctype} not handled")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 255
        elif f == 2:
            row = bytearray((a + b) & 255 for a, b in zip(row, prev))
        elif f == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 255
        rows.append(row)
        prev = row
    return width, height, bpp, rows


def check_png(path, min_fraction):
    width, height, bpp, rows = png_pixels(path)
    nonwhite = blue = 0
    for row in rows:
        for x in range(0, width * bpp, bpp):
            r, g, b = row[x], row[x + 1], row[x + 2]
            if r < 245 or g < 245 or b < 245:
                nonwhite += 1
                if abs(r - 0x1F) < 24 and abs(g - 0x77) < 24 and abs(b - 0xB4) < 24:
                    blue += 1
    fraction = nonwhite / (width * height)
    print(f"ok: {path}: {width}x{height}, {fraction:.1%} not white, {blue} pixels of the first "
          f"series colour")
    if fraction < min_fraction:
        fail(f"{path} is nearly blank: {fraction:.2%} of its pixels are not white")
    if blue < 500:
        fail(f"{path}: only {blue} pixels of the first series colour: no chart lines?")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "dom":
        check_dom(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
    elif len(sys.argv) == 4 and sys.argv[1] == "png":
        check_png(sys.argv[2], float(sys.argv[3]))
    else:
        print(__doc__)
        sys.exit(2)
