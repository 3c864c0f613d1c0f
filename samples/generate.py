#!/usr/bin/env python3
"""Generates samples/manifest.csv and the files it names (real JPEG, PNG and PDF bytes).

Standard library only: PNG through zlib, a hand-written PDF, and a small baseline JPEG
encoder. Deterministic: running it again produces the same bytes.

    python3 samples/generate.py        # from the repository root (or anywhere)
"""

import csv
import math
import random
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"

HARBOURVIEW = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804"  # Harbourview Apartments
PARRAMATTA = "b2e94c17-3a5f-4d86-9e21-0f7c4a8d6b53"  # Parramatta Rd Townhouses


# --- pictures -----------------------------------------------------------------------------

def scene(kind, width, height, seed):
    """Rows of (r, g, b): a surface of some material with a defect drawn on it."""
    rng = random.Random(seed)
    base = {
        "wall": (214, 203, 184), "tiles": (226, 228, 224), "timber": (150, 104, 64),
        "glass": (150, 178, 196), "ceiling": (236, 236, 232), "render": (205, 196, 178),
        "steel": (128, 134, 140), "pipe": (96, 112, 88), "bench": (60, 62, 66),
    }[kind]
    crack = [(rng.uniform(0.1, 0.3) * width, rng.uniform(0.1, 0.9) * height)]
    for _ in range(12):
        x, y = crack[-1]
        crack.append((x + width / 14, y + rng.uniform(-height / 10, height / 10)))
    stain = (rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height,
             rng.uniform(0.12, 0.25) * width)
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            light = 0.85 + 0.25 * (x / width) - 0.1 * (y / height)
            r, g, b = (c * light for c in base)
            if kind == "tiles" and (x % 64 < 3 or y % 64 < 3):
                r, g, b = 170, 170, 165  # grout
            elif kind == "timber":
                grain = 18 * math.sin(y / 3.0 + 4 * math.sin(x / 40.0))
                r, g, b = r + grain, g + grain * 0.7, b + grain * 0.4
                if abs(x - width * 0.12) < 10 and (abs(y - height * 0.25) < 22 or abs(y - height * 0.75) < 22):
                    r, g, b = 190, 190, 196  # hinge
            elif kind == "steel" and y % 24 < 4:
                r, g, b = r - 40, g - 40, b - 40  # roller door ribs
            elif kind == "pipe" and abs(x - width / 2) < width / 10:
                r, g, b = 228, 228, 220  # downpipe
            elif kind == "ceiling":
                d = math.hypot(x - stain[0], (y - stain[1]) * 1.4) / stain[2]
                if d < 1:
                    k = 1 - d
                    r, g, b = r - 70 * k, g - 95 * k, b - 130 * k
            if kind in ("wall", "tiles", "render", "glass", "bench"):
                for (x0, y0), (x1, y1) in zip(crack, crack[1:]):
                    if x0 <= x < x1:
                        t = (x - x0) / (x1 - x0)
                        if abs(y - (y0 + t * (y1 - y0))) < 1.6:
                            r, g, b = 45, 40, 38
            n = rng.uniform(-9, 9)
            row.append(tuple(max(0, min(255, int(c + n))) for c in (r, g, b)))
        rows.append(row)
    return rows


# --- JPEG (baseline, 4:4:4) -----------------------------------------------------------------

ZIGZAG = sorted(((r, c) for r in range(8) for c in range(8)),
                key=lambda rc: (rc[0] + rc[1], rc[0] if (rc[0] + rc[1]) % 2 else rc[1]))

LUMA_Q = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
          14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
          18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
          49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA_Q = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
            24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32

# Flat Huffman tables: every DC category gets a 4-bit code and every AC symbol an 8-bit
# one. Not optimal, but valid for any image and short to write down.
DC_SYMBOLS = list(range(12))
AC_SYMBOLS = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]


def scaled(table, quality):
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return [max(1, min(255, int((q * scale + 50) / 100))) for q in table]


def canonical_codes(symbols, length):
    return {s: (i, length) for i, s in enumerate(symbols)}


COS = [[(math.sqrt(0.5) if k == 0 else 1.0) / 2 * math.cos((2 * n + 1) * k * math.pi / 16)
        for n in range(8)] for k in range(8)]


def dct(block):
    """8x8 forward DCT, separable: rows then columns."""
    tmp = [[sum(row[n] * COS[u][n] for n in range(8)) for u in range(8)] for row in block]
    return [[sum(tmp[n][u] * COS[v][n] for n in range(8)) for u in range(8)] for v in range(8)]


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.bits = 0

    def put(self, value, length):
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.bits += length
        while self.bits >= 8:
            self.bits -= 8
            byte = (self.acc >> self.bits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing
        self.acc &= (1 << self.bits) - 1

    def flush(self):
        if self.bits:
            self.put((1 << (8 - self.bits)) - 1, 8 - self.bits)


def category(value):
    return abs(value).bit_length()


def amplitude(value, size):
    return value if value >= 0 else value + (1 << size) - 1


def segment(marker, payload):
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def jpeg(rows, quality=80):
    height, width = len(rows), len(rows[0])
    assert width % 8 == 0 and height % 8 == 0
    qy, qc = scaled(LUMA_Q, quality), scaled(CHROMA_Q, quality)
    dc_codes = canonical_codes(DC_SYMBOLS, 4)
    ac_codes = canonical_codes(AC_SYMBOLS, 8)
    planes = [[[0.0] * width for _ in range(height)] for _ in range(3)]
    for y, row in enumerate(rows):
        for x, (r, g, b) in enumerate(row):
            planes[0][y][x] = 0.299 * r + 0.587 * g + 0.114 * b - 128
            planes[1][y][x] = -0.168736 * r - 0.331264 * g + 0.5 * b
            planes[2][y][x] = 0.5 * r - 0.418688 * g - 0.081312 * b
    bits = BitWriter()
    previous_dc = [0, 0, 0]
    for by in range(0, height, 8):
        for bx in range(0, width, 8):
            for c, plane in enumerate(planes):
                q = qy if c == 0 else qc
                coeffs = dct([plane[by + i][bx:bx + 8] for i in range(8)])
                zz = [int(round(coeffs[r][col] / q[r * 8 + col])) for r, col in ZIGZAG]
                diff = zz[0] - previous_dc[c]
                previous_dc[c] = zz[0]
                size = category(diff)
                bits.put(*dc_codes[size])
                bits.put(amplitude(diff, size), size)
                run = 0
                for value in zz[1:]:
                    if value == 0:
                        run += 1
                        continue
                    while run > 15:
                        bits.put(*ac_codes[0xF0])
                        run -= 16
                    size = category(value)
                    bits.put(*ac_codes[(run << 4) | size])
                    bits.put(amplitude(value, size), size)
                    run = 0
                if run:
                    bits.put(*ac_codes[0x00])
    bits.flush()

    def dht(table_class, table_id, symbols, length):
        counts = [0] * 16
        counts[length - 1] = len(symbols)
        return bytes([(table_class << 4) | table_id] + counts + symbols)

    out = bytearray(b"\xFF\xD8")
    out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x48\x00\x48\x00\x00")
    for table_id, q in enumerate((qy, qc)):
        out += segment(0xDB, bytes([table_id] + [q[r * 8 + col] for r, col in ZIGZAG]))
    out += segment(0xC0, struct.pack(">BHHB", 8, height, width, 3)
                   + bytes([1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]))
    out += segment(0xC4, dht(0, 0, DC_SYMBOLS, 4) + dht(1, 0, AC_SYMBOLS, 8))
    out += segment(0xDA, bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0]))
    out += bits.out
    out += b"\xFF\xD9"
    return bytes(out)


# --- PNG ------------------------------------------------------------------------------------

def png(rows):
    height, width = len(rows), len(rows[0])

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def markup(rows, box):
    """A photo with a red rectangle drawn around the defect, as a site app exports it."""
    x0, y0, x1, y1 = box
    out = [list(row) for row in rows]
    for y in range(len(out)):
        for x in range(len(out[0])):
            on_edge = (x0 <= x <= x1 and (abs(y - y0) < 3 or abs(y - y1) < 3)) or \
                      (y0 <= y <= y1 and (abs(x - x0) < 3 or abs(x - x1) < 3))
            if on_edge:
                out[y][x] = (220, 30, 30)
    return out


# --- PDF ------------------------------------------------------------------------------------

def pdf(title, rooms, note):
    """A one-page A4 floor plan: rooms as rectangles with their names, a title and a note."""
    ops = ["0.8 w", "0 0 0 RG"]
    for name, x, y, w, h in rooms:
        ops.append(f"{x} {y} {w} {h} re S")
        ops.append(f"BT /F1 9 Tf {x + 6} {y + h - 14} Td ({name}) Tj ET")
    ops.append(f"BT /F1 16 Tf 56 790 Td ({title}) Tj ET")
    ops.append(f"BT /F1 9 Tf 56 60 Td ({note}) Tj ET")
    content = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# --- the manifest ---------------------------------------------------------------------------

PHOTOS = {
    # path under files/: (scene, width, height)
    "photos/hv-0101-hinge-1.jpg": ("timber", 320, 240),
    "photos/hv-0101-hinge-2.jpg": ("timber", 240, 320),
    "photos/hv-0102 cracked tile.jpg": ("tiles", 320, 240),
    "photos/hv-0104-balustrade-1.jpg": ("glass", 320, 240),
    "photos/hv-0104-balustrade-2.jpg": ("glass", 320, 240),
    "photos/hv-0104-balustrade-3.jpg": ("glass", 240, 320),
    "photos/hv-0105-ceiling-stain.jpg": ("ceiling", 320, 240),
    "photos/hv-0106-sink-seal.jpg": ("bench", 320, 240),
    "photos/hv-0107-front-door.jpg": ("timber", 240, 320),
    "photos/pr-2001-roller-door-1.jpg": ("steel", 320, 240),
    "photos/pr-2001-roller-door-2.jpg": ("steel", 320, 240),
    "photos/pr-2002-render-crack.jpg": ("render", 320, 240),
    "photos/pr-2002-render-crack-closeup.jpg": ("render", 240, 240),
    "photos/pr-2003-downpipe.jpg": ("pipe", 240, 320),
    "photos/pr-2004-skirting.jpg": ("wall", 320, 240),
}

MARKUPS = {
    "markup/hv-0104-balustrade-markup.png": ("photos/hv-0104-balustrade-1.jpg", (60, 50, 200, 170)),
    "markup/hv-0105-ceiling-markup.png": ("photos/hv-0105-ceiling-stain.jpg", (90, 60, 240, 190)),
}

PLANS = {
    "plans/harbourview-level-4-floor-plan.pdf": (
        "Harbourview Apartments - Level 4 floor plan",
        [("Unit 401", 56, 520, 160, 200), ("Unit 402", 216, 520, 160, 200),
         ("Unit 405", 376, 520, 160, 200), ("Corridor", 56, 440, 480, 80),
         ("Unit 405 bathroom", 376, 300, 100, 140), ("Lift lobby", 56, 300, 160, 140)],
        "Issued for construction. Rev C. Not to scale.",
    ),
    "plans/parramatta-rd-ground-floor-plan.pdf": (
        "Parramatta Rd Townhouses - ground floor",
        [("Townhouse 1", 56, 480, 96, 240), ("Townhouse 2", 152, 480, 96, 240),
         ("Townhouse 3", 248, 480, 96, 240), ("Townhouse 4", 344, 480, 96, 240),
         ("Townhouse 5", 440, 480, 96, 240), ("Driveway", 56, 360, 480, 120)],
        "Hallway smoke alarms per AS 3786. Rev B.",
    ),
}

A, B = HARBOURVIEW, PARRAMATTA
MAIN = "123 Main St, Sydney NSW 2000"
PRD = "45 Parramatta Rd, Annandale NSW 2038"
ROWS = [
    # ref, project_id, title, address, priority, contact_name, contact_email, attachments
    ("HV-0101", A, "Kitchen cabinet door hinge broken", f"Unit 405, {MAIN}", "medium",
     "Priya Sharma", "priya.sharma@example.com.au",
     "files/photos/hv-0101-hinge-1.jpg;files/photos/hv-0101-hinge-2.jpg"),
    ("HV-0102", A, "Cracked floor tile in bathroom", f"Unit 405, {MAIN}", "high",
     "Priya Sharma", "priya.sharma@example.com.au",
     "files/photos/hv-0102 cracked tile.jpg; files/plans/harbourview-level-4-floor-plan.pdf"),
    ("HV-0103", A, "Paint scuff on corridor wall near lift", f"Level 4 corridor, {MAIN}", "low",
     "", "", ""),
    ("HV-0104", A, "Balcony balustrade glass panel chipped", f"Unit 712, {MAIN}", "high",
     "Tom Nguyen", "tom.nguyen@example.com.au", "files/photos/hv-0104-balustrade-1.jpg"),
    ("HV-0104", A, "", "", "", "", "", "files/photos/hv-0104-balustrade-2.jpg"),
    ("HV-0104", A, "Balcony balustrade glass panel chipped", "", "high", "", "",
     "files/photos/hv-0104-balustrade-3.jpg;files/markup/hv-0104-balustrade-markup.png"),
    ("HV-0105", A, "Water stain on ceiling below ensuite", f"Unit 305, {MAIN}", "high",
     "Grace O'Connor", "grace.oconnor@example.com.au",
     "files/photos/hv-0105-ceiling-stain.jpg;files/markup/hv-0105-ceiling-markup.png"),
    ("HV-0106", A, "Missing silicone seal around kitchen sink", f"Unit 211, {MAIN}", "medium",
     "", "", "files/photos/hv-0106-sink-seal.jpg"),
    ("HV-0107", A, "Front door does not latch", f"Unit 108, {MAIN}", "medium",
     "Liam Walker", "liam.walker@example.com.au", "files/photos/hv-0107-front-door.jpg"),
    ("PR-2001", B, "Garage roller door misaligned", f"Townhouse 3, {PRD}", "medium",
     "Mei Chen", "mei.chen@example.com.au",
     "files/photos/pr-2001-roller-door-1.jpg;files/photos/pr-2001-roller-door-2.jpg"),
    ("PR-2002", B, "Render cracking above bedroom window", f"Townhouse 5, {PRD}", "high",
     "Mei Chen", "mei.chen@example.com.au",
     "files/photos/pr-2002-render-crack.jpg;files/photos/pr-2002-render-crack-closeup.jpg;"
     "files/plans/parramatta-rd-ground-floor-plan.pdf"),
    ("PR-2003", B, "Downpipe not connected to stormwater", f"Townhouse 1, {PRD}", "high",
     "", "", "files/photos/pr-2003-downpipe.jpg"),
    ("PR-2004", B, "Skirting board gap in living room", f"Townhouse 2, {PRD}", "low",
     "Jack Murphy", "jack.murphy@example.com.au", "files/photos/pr-2004-skirting.jpg"),
    ("PR-2005", B, "Smoke alarm missing in upstairs hallway", f"Townhouse 4, {PRD}", "high",
     "Jack Murphy", "jack.murphy@example.com.au",
     "files/plans/parramatta-rd-ground-floor-plan.pdf"),
]


def write(relative, data):
    path = FILES / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main():
    pictures = {}
    for seed, (relative, (kind, width, height)) in enumerate(sorted(PHOTOS.items())):
        pictures[relative] = scene(kind, width, height, seed)
        write(relative, jpeg(pictures[relative]))
    for relative, (photo, box) in MARKUPS.items():
        write(relative, png(markup(pictures[photo], box)))
    for relative, (title, rooms, note) in PLANS.items():
        write(relative, pdf(title, rooms, note))
    with open(HERE / "manifest.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["ref", "project_id", "title", "address", "priority",
                         "contact_name", "contact_email", "attachments"])
        writer.writerows(ROWS)


if __name__ == "__main__":
    main()
