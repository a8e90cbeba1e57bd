# How the model-v1-* files were written: by xharmonise 0.1.0 (commit 4d20a6a, model format
# "xharmonise-model/1"), before the model format moved. Kept to show what they hold; it
# cannot regenerate them with a later release, which is the point of keeping them.
import numpy as np, xharmonise
from xharmonise.simulate import simulate_pair
pair = simulate_pair((120, 120), seed=3)
src = pair.src.isel(y=slice(0, 40), x=slice(0, 40))
io = {"src": src.values.astype(np.float32), "y": src.y.values, "x": src.x.values}
for method, kw in (("linear", {}), ("bcnet", dict(variance=True, iterations=4, batch_size=4)), ("convcalibnet", dict(iterations=4, batch_size=4))):
    m = xharmonise.fit(pair.src, pair.ref, method=method, patch_size=4, progress=False, **kw)
    path = m.save(f"tests/data/model-v1-{method}.safetensors")
    out = xharmonise.predict(src, m)
    io[f"{method}.prediction"] = out["prediction"].values
    if "variance" in out:
        io[f"{method}.variance"] = out["variance"].values
np.savez_compressed("tests/data/model-v1-io.npz", **io)
