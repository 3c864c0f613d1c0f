#!/usr/bin/env python3
"""Generate a benchmark manifest and its files (deterministic: seeded).

pipeline/rate:  gen_manifest.py DIR --tickets 400 --files 800 --min-kb 1 --max-kb 40
ingest:         gen_manifest.py DIR --tickets 100000 --shared-files 100
large file:     gen_manifest.py DIR --tickets 1 --attach PATH   (one ticket naming PATH)
ingest-large:   gen_manifest.py DIR --tickets 1000000 --no-files

Files are random bytes named .jpg/.pdf; every ticket has at least one file (none with
--no-files, the rows then have an empty attachments cell), and with --files N the remainder
is spread at random. --shared-files N makes N small (1 KB) files that the rows name
round-robin, so a huge manifest costs little disk.
"""
import argparse
import os
import random
import uuid

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--tickets", type=int, required=True)
p.add_argument("--files", type=int, default=0)
p.add_argument("--min-kb", type=int, default=1)
p.add_argument("--max-kb", type=int, default=40)
p.add_argument("--shared-files", type=int, default=0)
p.add_argument("--attach", default=None)
p.add_argument("--no-files", action="store_true")
p.add_argument("--seed", type=int, default=6)
a = p.parse_args()

rng = random.Random(a.seed)
files_dir = os.path.join(a.dir, "files")
os.makedirs(files_dir, exist_ok=True)
project = uuid.UUID(int=rng.getrandbits(128), version=4)


def make_file(name, size):
    with open(os.path.join(files_dir, name), "wb") as f:
        f.write(rng.randbytes(size))
    return "files/" + name


if a.no_files:
    per_ticket = ([] for _ in range(a.tickets))
elif a.attach:
    per_ticket = [[a.attach]]
elif a.shared_files:
    shared = [make_file(f"shared-{i:03}.jpg", 1024) for i in range(a.shared_files)]
    per_ticket = [[shared[t % len(shared)]] for t in range(a.tickets)]
else:
    counts = [1] * a.tickets
    for _ in range(max(0, a.files - a.tickets)):
        counts[rng.randrange(a.tickets)] += 1
    per_ticket = []
    for t, n in enumerate(counts):
        names = []
        for i in range(n):
            ext = "pdf" if rng.random() < 0.2 else "jpg"
            size = rng.randint(a.min_kb * 1024, a.max_kb * 1024)
            names.append(make_file(f"t{t:06}-{i}.{ext}", size))
        per_ticket.append(names)

priorities = ["low", "medium", "high", ""]
with open(os.path.join(a.dir, "manifest.csv"), "w", newline="") as out:
    out.write("ref,project_id,title,address,priority,attachments\n")
    for t, names in enumerate(per_ticket):
        out.write(
            f"BENCH-{t:06},{project},Defect {t} found on inspection,"
            f"\"Unit {t % 900 + 100}, 1 Bench St\",{priorities[t % 4]},{';'.join(names)}\n"
        )
