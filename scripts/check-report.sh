#!/usr/bin/env bash
# Renders a study report and checks it the way a reader's browser sees it:
#   1. the HTML names nothing on the network (no http(s) URL, no src=/href=, no @import/url()),
#      is well-formed, and opens with a findings section;
#   2. headless Chromium's DOM still holds the inline SVG plots (svg, circle, path, text);
#   3. a 1400×3000 screenshot is not blank: enough non-white pixels overall, and enough
#      saturated colour (the plots' areas, bars and points; text alone is grey) in the page.
# Usage: scripts/check-report.sh [path/to/report.html]   (default: renders one with tperf study)
# Needs: chromium (Debian: apt-get install chromium), python3. Exits 0 on pass, 1 on failure,
# 77 (skip) when chromium is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z "$CHROMIUM" ]]; then
    echo "check-report: SKIP: chromium not found (Debian: apt-get install -y chromium)"
    exit 77
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ $# -ge 1 ]]; then
    report=$1
else
    TPERF=${TPERF:-}
    if [[ -z "$TPERF" ]]; then
        cargo build --release -q -p tperf
        TPERF="${CARGO_TARGET_DIR:-target}/release/tperf"
    fi
    "$TPERF" study --out "$work/out" > "$work/study.txt"
    report=$(ls "$work"/out/*/report.html)
fi
echo "check-report: $report"
fail=0

# 1. Nothing on the network. (The SVG namespace attribute is dropped when plots are inlined,
#    so even it does not appear.)
if grep -n -E -o 'https?://[^"'"'"' <]*|(src|href)=|@import|url\(' "$report" | head -5 | grep -q .; then
    echo "FAIL: the report references external resources:"
    grep -n -E -o 'https?://[^"'"'"' <]*|(src|href)=|@import|url\(' "$report" | head -5
    fail=1
else
    echo "ok: no network references"
fi

# 2a. Well-formed as written (every element closed, in order), and the findings open the page
#     with sentences drawn from the data (a bound and the largest shares).
python3 - "$report" <<'PY' || fail=1
import sys
from html.parser import HTMLParser
VOID = {"meta", "br", "hr", "img", "link", "input"}
class Check(HTMLParser):
    def __init__(self):
        super().__init__(); self.open = []; self.errors = []
    def handle_starttag(self, tag, attrs):
        if tag not in VOID: self.open.append(tag)
    def handle_startendtag(self, tag, attrs):
        pass
    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()
html = open(sys.argv[1], encoding="utf-8").read()
c = Check(); c.feed(html); c.close()
ok = not c.errors and not c.open
print("ok: the HTML is well-formed" if ok else f"FAIL: malformed HTML: {c.errors[:3]} open {c.open[-3:]}")
f, a = html.find('id="findings"'), html.find("<h2>Analyses</h2>")
findings = html[f:html.find("</section>", f)] if f >= 0 else ""
has = 0 <= f < a and "Bound:" in findings and "Largest shares:" in findings
print("ok: a findings section opens the report" if has else "FAIL: no findings section before the analyses")
sys.exit(0 if ok and has else 1)
PY

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$work/profile")

# 2. The DOM after parsing: the plots survived as SVG elements.
"$CHROMIUM" "${flags[@]}" --dump-dom "file://$(realpath "$report")" > "$work/dom.html" 2> "$work/chromium-dom.log" || true
python3 - "$work/dom.html" "$report" <<'PY' || fail=1
import re, sys
dom = open(sys.argv[1], encoding="utf-8", errors="replace").read()
src = open(sys.argv[2], encoding="utf-8").read()
want = len(re.findall(r"<svg\b", src))
count = {t: len(re.findall(r"<%s\b" % t, dom)) for t in ["svg", "circle", "path", "polyline", "rect", "text"]}
print("dom:", ", ".join(f"{k} {v}" for k, v in count.items()), f"(source has {want} svg)")
ok = want > 0 and count["svg"] == want and count["circle"] > 10 and count["text"] > 30 and (count["path"] + count["polyline"]) > 5
print("ok: the SVG plots survived in the DOM" if ok else "FAIL: SVG plots missing from the DOM")
sys.exit(0 if ok else 1)
PY

# 3. The rendered pixels.
"$CHROMIUM" "${flags[@]}" --screenshot="$work/shot.png" --window-size=1400,3000 \
    "file://$(realpath "$report")" 2> "$work/chromium-shot.log" || true
if [[ ! -s "$work/shot.png" ]]; then
    echo "FAIL: no screenshot; chromium said:"; tail -5 "$work/chromium-shot.log"; exit 1
fi
python3 - "$work/shot.png" <<'PY' || fail=1
# A minimal PNG reader (8-bit RGB/RGBA, non-interlaced: what Chromium writes), so the check
# needs no imaging library.
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat = 8, b""
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG {depth} {ctype} {interlace}"
bpp = 3 if ctype == 2 else 4
raw, stride = zlib.decompress(idat), w * bpp
prev, rows, i = bytearray(stride), [], 0
for _ in range(h):
    f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]; c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line); prev = line
nonwhite = colour = 0
band_colour = [0] * 10
for y, line in enumerate(rows):
    for x in range(0, stride, bpp):
        r, g, b = line[x], line[x + 1], line[x + 2]
        if min(r, g, b) < 240: nonwhite += 1
        if max(r, g, b) - min(r, g, b) > 60:
            colour += 1; band_colour[y * 10 // h] += 1
total = w * h
print(f"screenshot {w}x{h}: non-white {nonwhite / total:.1%}, saturated colour {colour / total:.1%}; "
      "colour by tenth of the page: " + " ".join(f"{c / (total / 10):.0%}" for c in band_colour))
ok = nonwhite / total > 0.03 and colour / total > 0.01 and sum(c > 0 for c in band_colour) >= 3
print("ok: the page rendered with plots" if ok else "FAIL: the screenshot looks blank or plot-less")
sys.exit(0 if ok else 1)
PY
if [[ -n "${KEEP_SCREENSHOT:-}" ]]; then cp "$work/shot.png" "$KEEP_SCREENSHOT"; echo "screenshot kept at $KEEP_SCREENSHOT"; fi
if [[ $fail -ne 0 ]]; then echo "check-report: FAILED"; exit 1; fi
echo "check-report: passed"
