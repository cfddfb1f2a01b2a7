"""Training speed of a run of scripts/train_gpu.sh or scripts/train_inpaint_gpu.sh, written to a speed.txt:
steps/s and images/s between the first and the last logged steps of RUN/loss.csv (the first interval holds the
start-up and cuDNN autotuning), with the run's steps, wall time, device and last loss from RUN/config.json.
Usage: python scripts/gpu_speed.py RUN BATCH OUT_TXT"""
import csv
import json
import sys

run, batch, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = list(csv.DictReader(open(f"{run}/loss.csv")))
training = json.load(open(f"{run}/config.json"))["training"]
(s0, w0), (s1, w1) = [(int(r["step"]), float(r["wall_seconds"])) for r in (rows[0], rows[-1])]
if len(rows) < 2 or w1 <= w0:
    s0, w0 = 0, 0.0  # a single logged step: the whole run, start-up included
rate = (s1 - s0) / max(w1 - w0, 1e-9)
data = f", {training['crops']} crops of {training['masks']} masks" if "crops" in training else ""
text = (f"{rate:.2f} steps/s, {rate * batch:.0f} images/s (batch {batch}, steps {s0}-{s1} over {w1 - w0:.1f} s); "
        f"{training['steps']} steps in {training['wall_seconds']} s on {training['device']}{data}, last logged loss "
        f"{rows[-1]['loss']}\n")
open(out, "w").write(text)
print(text, end="")
