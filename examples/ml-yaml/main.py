"""A MachineLabs-style lab (standard library only): reads its input from inputs/, takes its
parameters from the command line, and leaves its results in outputs/ (uploaded at the end)."""

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--target", default="species")
parser.add_argument("--_id", default="local", help="the experiment id, which Fleetlab passes")
args = parser.parse_args()

with Path("inputs/iris.csv").open(newline="") as f:
    rows = list(csv.DictReader(f))
print(f"read {len(rows)} rows from inputs/iris.csv", flush=True)
classes = Counter(row[args.target] for row in rows)
for epoch in range(1, args.epochs + 1):
    print(f"epoch {epoch}/{args.epochs}: {len(classes)} classes", flush=True)

Path("outputs").mkdir(exist_ok=True)
Path("outputs/classes.json").write_text(json.dumps(dict(sorted(classes.items())), indent=2))
print("wrote outputs/classes.json", flush=True)
