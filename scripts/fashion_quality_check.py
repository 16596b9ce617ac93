"""Quick quality check of the Fashion-MNIST DiT against data: Euler-50 (cfg 1, 2) and Euler-10 (cfg 2), 1,000
samples per run, noise seeds 0 and 1; FD and accuracy from the Fashion judge. Writes /tmp/m/fashion.json
(copied to results/fashion_quality_check.json). Run from the repository root with PYTHONPATH=.
"""
import json, time, torch
torch.set_num_threads(1)
from models.checkpoint import load_model
from models.evaluation import Judge, make_noise, balanced_labels
from fastflow import EulerSampler
model,_,meta = load_model("checkpoints/dit_fashion.pt")
judge = Judge.for_model(meta)
n = 1000
y = balanced_labels(n, 10)
out = {}
for seed in (0, 1):
  x0 = make_noise(n, (1,28,28), seed)
  for steps in (50, 10):
    for cfg in ((1.0, 2.0) if steps == 50 and seed == 0 else (2.0,)):
        t = time.time()
        with torch.no_grad():
            xs = torch.cat([EulerSampler(steps).sample(model.forward_with_cfg, x0[i:i+250], y=y[i:i+250], cfg_scale=cfg).x for i in range(0, n, 250)])
        r = dict(fd=judge.fid(xs.clamp(-1,1)), acc=judge.accuracy(xs.clamp(-1,1), y), s=time.time()-t)
        out[f"euler{steps} cfg{cfg} seed{seed}"] = r; print(steps, cfg, seed, r, flush=True)
json.dump(out, open("/tmp/m/fashion.json","w"), indent=1)
