"""A toy training loop (standard library only): prints progress, writes per-step metrics
(``#loss <step> <value>`` lines) and an output file, and FGMachine's scores."""

import argparse
import json
import math
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--_id", default="local")
args = parser.parse_args()

loss = 1.0
for epoch in range(args.epochs):
    loss *= math.exp(-args.lr)
    print(f"epoch {epoch} loss {loss:.4f}", flush=True)
    print(f"#loss {epoch} {loss:.6f}", flush=True)

Path("outputs").mkdir(exist_ok=True)
Path("outputs/model.json").write_text(json.dumps({"lr": args.lr, "final_loss": loss}))
Path("scores.json").write_text(json.dumps({"_scores": {"loss": loss}}))
print("done", flush=True)
