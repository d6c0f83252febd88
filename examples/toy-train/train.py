"""A toy training loop (standard library only): prints progress, logs per-step metrics,
writes a model file into the outputs folder and the run's scores.

Run by Fleetlab (``fleetlab run examples/toy-train -f``), metrics go through ``import
fleetlab`` — the helper every run finds on its PYTHONPATH — and the model file into
``$FLEETLAB_OUTPUTS_DIR``, which is uploaded when the run ends. Run by hand
(``python3 train.py --lr 0.5``), the same program works and writes ``outputs/`` here.
"""

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

try:
    import fleetlab  # provided by the agent; nothing to install
except ImportError:  # run by hand: metrics are printed only
    fleetlab = None

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--delay", type=float, default=0.0, help="seconds per epoch")
parser.add_argument("--_id", default="local")
args = parser.parse_args()

random.seed(args.seed)
outputs = Path(os.environ.get("FLEETLAB_OUTPUTS_DIR", "outputs"))
outputs.mkdir(parents=True, exist_ok=True)

loss, accuracy = 1.0, 0.0
print(f"training {args._id}: lr={args.lr} epochs={args.epochs}", flush=True)
for epoch in range(args.epochs):
    loss *= math.exp(-args.lr) * (1 + random.uniform(-0.02, 0.02))  # noqa: S311 - noise
    accuracy = 1 - loss / 2
    print(f"epoch {epoch} loss {loss:.4f} accuracy {accuracy:.4f}", flush=True)
    if fleetlab is not None:
        fleetlab.log(step=epoch, loss=loss, accuracy=accuracy)
    time.sleep(args.delay)

model = {"lr": args.lr, "epochs": args.epochs, "final_loss": loss, "accuracy": accuracy}
(outputs / "model.json").write_text(json.dumps(model, indent=2) + "\n")
if fleetlab is not None:
    fleetlab.result(loss=loss, accuracy=accuracy)
print(f"final loss {loss:.4f}; model written to {outputs / 'model.json'}", flush=True)
print("done", flush=True)
