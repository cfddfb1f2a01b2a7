"""SDEdit-style check: start DDIM from the noised distance-weighted fill at strength s instead of pure noise."""
import sys
import numpy as np, torch
from pathlib import Path
from BrainDiffSegLib.inpaint import prepare, paste
from BrainDiffSegLib.inpaint_model import load_inpaint_model, model_input, sampling_scheduler, sample_range
from BrainDiffSegLib.inpaint_masks import healthy_masks
from BrainDiffSegLib.inpaint_train import load_t1_cases
from BrainDiffSegBench.inpaint_metrics import fill_distance_weighted, challenge_metrics
from BrainDiffSegBench.splits import data_split
torch.set_num_threads(1)
test = data_split(Path('/work/shared/data'))['test']
lgg = [c for c in test if 'lgg' in str(c).lower()]; other = [c for c in test if c not in lgg]
n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
cases = load_t1_cases(other[:n] + lgg[:n])
placed = healthy_masks(cases, seed=0, per_case=1)
by = {c.name: c for c in cases}
net, cfg = load_inpaint_model('/work/runs/ctx_4500'); net.eval()
steps = 25
STRENGTHS = [float(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else (0.3, 0.5, 0.7)
res = {}
for mask, rec in placed:
    case = by[rec['case']]; t1 = case.images['t1']; voided = np.where(mask, 0, t1).astype(np.float32)
    dw = fill_distance_weighted(voided, mask)
    prep_dw = prepare(dw, mask, cfg)   # 'clean' = the dw fill on the model scale; intensity range of dw ~ voided's
    prep = prepare(voided, mask, cfg)
    res.setdefault('dw', []).append(challenge_metrics(dw, t1, voided, mask))
    for s in STRENGTHS:
        sched = sampling_scheduler(cfg, steps)
        gen = torch.Generator().manual_seed(0)
        i0 = int(round((1 - s) * steps))
        x0 = prep_dw['clean'][:, None]
        outs = []
        for k in range(4):
            noise = torch.randn(x0.shape, generator=gen)
            x = sched.add_noise(x0, noise, sched.timesteps[i0:i0 + 1])
            cv, cm = prep['voided'][:, None], prep['mask'][:, None]
            with torch.no_grad():
                for t in sched.timesteps[i0:]:
                    eps = torch.cat([net(model_input(x[i:i+32], cv[i:i+32], cm[i:i+32]), t.expand(len(x[i:i+32])))
                                     for i in range(0, len(x), 32)])
                    x = sched.step(eps, t, x, generator=gen).prev_sample
            b = sample_range(cfg)
            outs.append(x[:, 0].clamp(-b, b))
        pred = torch.stack(outs).mean(0)
        filled = paste(voided, mask, pred, prep)
        res.setdefault(f'sdedit-{s}', []).append(challenge_metrics(filled, t1, voided, mask))
    print(case.name, {k: round(v[-1]['ssim'], 3) for k, v in res.items()}, flush=True)
for k, v in res.items():
    print(k, ' '.join(f"{m} {np.mean([r[m] for r in v]):.4f}" for m in ('ssim', 'psnr', 'mse')))
