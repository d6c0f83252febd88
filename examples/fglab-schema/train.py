"""An FGLab/FGMachine-style program (standard library only): options as --key=value, progress
on stdout, and results as FGMachine read them — JSON files in the results folder, whose
``_scores`` Fleetlab merges into the experiment's results while the run goes."""

import argparse
import json
import math
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--_id", default="local")
args = parser.parse_args()

results = Path("results")
results.mkdir(exist_ok=True)
loss = 1.0
for epoch in range(1, args.epochs + 1):
    loss *= math.exp(-args.lr)
    print(f"epoch {epoch} loss {loss:.4f}", flush=True)

# FGMachine: <results>/<id>.json with _scores (and any custom fields).
scores = {"_scores": {"loss": loss}, "lr": args.lr}
(results / f"{args._id}.json").write_text(json.dumps(scores))
print(f"final loss {loss:.4f}", flush=True)
