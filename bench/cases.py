"""One benchmark case per process (run by bench/run.py): prints one JSON line.

Times are medians of repeats after a warm-up; every ratio is against the forward-pass
floor measured in the same process: one plain inference pass of the same model over the
same batches.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tunnelscope as ts  # noqa: E402
from references import hsic1  # noqa: E402  float64 numpy reference of METRICS.md §7
from tunnelscope.analysis import run_pass, sample_split  # noqa: E402
from tunnelscope.capture import Capture  # noqa: E402
from tunnelscope.metrics.cka import MinibatchCKA  # noqa: E402
from tunnelscope.metrics.collapse import NCCAccuracy  # noqa: E402
from tunnelscope.metrics.moments import Moments  # noqa: E402
from tunnelscope.metrics.ridge import RidgeAccuracy, ridge_weights  # noqa: E402

MLP_DATA = "fashion-mnist[classes=0-4]"
VGG_DATA = "fashion-mnist[classes=0-4,size=32,channels=3,test_per_class=200]"
BATCH = 256


def reset_peak() -> None:
    """Reset the kernel's record of this process's peak resident memory (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib() -> float:
    """Peak resident memory since the last :func:`reset_peak`, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_peak(fn, repeats: int) -> tuple[float, float]:
    """Median time of ``fn`` and the peak resident memory while it ran."""
    fn()
    reset_peak()
    t = timed(fn, repeats)
    return t, peak_mib()


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def mlp12(device) -> tuple[torch.nn.Module, str]:
    """A trained MLP-12 (mlp-12x256, 10 epochs on Fashion-MNIST classes 0-4), trained here once."""
    out = ROOT / "runs" / "bench-mlp12"
    info = out / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("status") == "finished":
        ckpt = out / json.loads(info.read_text())["final_checkpoint"]
    else:
        ckpt = ts.train("mlp-12x256", MLP_DATA, epochs=10, out=out, overwrite=True, progress=False).final_checkpoint
    model, _ = ts.load_model(ckpt, device)
    return model.eval(), "mlp-12x256 (trained)"


def vgg(device) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    return ts.models.build("vggm11", 5, (3, 32, 32)).to(device).eval(), "vggm11 (untrained; timing only)"


def case_stats(model_fn, data_spec: str, device: torch.device, repeats: int) -> dict:
    """Forward floor vs the analysis test pass (moments, minibatch CKA, NCC, ridge)."""
    ds = ts.data.load(data_spec)
    model, label = model_fn(device)
    split = ds.test

    @torch.inference_mode()
    def forward():
        for x, _ in split.batches(BATCH, device=device):
            model(x)
        sync(device)

    capture = Capture(model, "blocks")
    train_moments = Moments(ds.num_classes)
    run_pass(capture, ds.train.subset(torch.arange(min(5000, len(ds.train)))), [train_moments], BATCH, device)
    points = train_moments.points
    means = {n: p.class_means() for n, p in points.items()}
    probes = {n: ridge_weights(p) for n, p in points.items()}

    def accumulators(which: str):
        out = []
        if which in ("all", "moments"):
            out.append(Moments(ds.num_classes))
        if which in ("all", "cka"):
            out.append(MinibatchCKA(capture.names))
        if which == "all":
            out += [NCCAccuracy(means, torch.float32), RidgeAccuracy(probes, torch.float32)]
        return out

    def stats(which: str):
        def go():
            run_pass(capture, split, accumulators(which), BATCH, device)
            sync(device)
        return go

    base = peak_mib()
    t_fwd, peak_fwd = timed_peak(forward, repeats)
    t_capture = timed(stats("none"), repeats)
    t_moments = timed(stats("moments"), repeats)
    t_cka = timed(stats("cka"), repeats)
    t_all, peak_all = timed_peak(stats("all"), repeats)
    return {"model": label, "data": data_spec, "samples": len(split), "device": str(device),
            "points": len(capture.names), "dims": sum(v["dims"] for v in capture.layout.values()),
            "forward_s": t_fwd, "capture_ratio": t_capture / t_fwd, "moments_ratio": t_moments / t_fwd,
            "cka_ratio": t_cka / t_fwd, "all_ratio": t_all / t_fwd,
            "peak_mib_after_load": base, "peak_mib_forward": peak_fwd, "peak_mib_stats": peak_all}


def case_cka_peer(model_fn, data_spec: str, reduce: str, device: torch.device, repeats: int, limit: int,
                  offset: float = 0.0) -> dict:
    """Within-model CKA heatmap: tunnelscope vs torch-cka, both against float64 numpy.

    ``offset`` is added to every probe point's output (by a forward hook both tools see),
    as in ReLU features with large means.
    """
    from torch_cka import CKA

    ds = ts.data.load(data_spec)
    model, label = model_fn(device)
    if offset:
        modules = dict(model.named_modules())
        for name in ts.models.probe_points(model, "blocks"):
            modules[name].register_forward_hook(lambda m, i, out: out + offset)
        label += f", probe outputs + {offset:g}"
    split = ds.test.subset(torch.arange(min(limit, len(ds.test))))
    capture = Capture(model, "blocks", reduce=reduce, max_dim=10**7)
    names = capture.names

    def ours():
        acc = MinibatchCKA(names)
        run_pass(capture, split, [acc], BATCH, device)
        sync(device)
        return acc.compute().cpu().numpy()

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*[torch.cat(t) for t in zip(*split.batches(BATCH))]), batch_size=BATCH)

    def peer():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka = CKA(model, model, model1_layers=names, model2_layers=names, device=str(device))
            cka.compare(loader)
        return cka.export()["CKA"].cpu().numpy()

    t_ours = timed(ours, repeats)
    mine = ours()
    try:
        t_peer = timed(peer, max(1, repeats // 2))
        theirs, peer_error = peer(), None
    except Exception as exc:  # the peer's own failure is a result
        t_peer, theirs, peer_error = float("nan"), None, f"{type(exc).__name__}: {exc}"
    # float64 references on the exact same minibatches, from the same captured float32 features,
    # one batch at a time keeping only its n x n Grams. HSIC₁ is unchanged by shifting a batch's
    # features, so the reference centres each batch first; the §7 formula on uncentred Grams is
    # evaluated too, to show what float64 alone loses when features have large means.
    hs = {"centred": np.zeros((len(names), len(names))), "uncentred": np.zeros((len(names), len(names)))}
    with torch.inference_mode():
        for x, _ in split.batches(BATCH, device=device):
            feats = {k: v.double().cpu().numpy() for k, v in capture(x).items()}
            grams = {"uncentred": {k: v @ v.T for k, v in feats.items()},
                     "centred": {k: (v - v.mean(0)) @ (v - v.mean(0)).T for k, v in feats.items()}}
            for kind, g in grams.items():
                for i, a in enumerate(names):
                    for j, b in enumerate(names[i:], start=i):
                        hs[kind][i, j] += hsic1(g[a], g[b])
    refs = {}
    for kind, h in hs.items():
        h = np.triu(h) + np.triu(h, 1).T
        refs[kind] = h / np.sqrt(np.outer(np.diag(h), np.diag(h)))
    ref = refs["centred"]
    fwd_model = model

    @torch.inference_mode()
    def forward():
        for x, _ in split.batches(BATCH, device=device):
            fwd_model(x)
        sync(device)

    t_fwd = timed(forward, repeats)
    return {"model": label, "data": data_spec, "reduce": reduce, "samples": len(split), "points": len(names),
            "dims": sum(v["dims"] for v in capture.layout.values()),
            "device": str(device), "forward_s": t_fwd, "ours_s": t_ours, "peer_s": t_peer,
            "ours_ratio": t_ours / t_fwd, "peer_ratio": t_peer / t_fwd,
            "ours_max_err": float(np.abs(mine - ref).max()),
            "peer_max_err": float(np.abs(theirs - ref).max()) if theirs is not None else float("nan"),
            "peer_error": peer_error,
            "uncentred_f64_max_err": float(np.abs(refs["uncentred"] - ref).max()), "ref_min": float(ref.min())}


def plain_probe(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, num_classes: int, cfg) -> float:
    """One layer's probe the way the papers' code trains it: an ``nn.Linear`` with PyTorch's
    default initialisation, autograd, ``torch.optim.AdamW``, shuffled minibatches; the same
    protocol (epochs, batch, lr, label smoothing) as tunnelscope's joint trainer."""
    lin = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.AdamW(lin.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=g).to(x.device)
        for lo in range(0, len(y), cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(lin(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((lin(xt).argmax(1) == yt).float().mean())


def case_probes(device: torch.device, epochs: int) -> dict:
    """All-layer probes: the joint trainer against the per-layer loop of the same protocol
    (the papers' way) and against scikit-learn's LogisticRegression per layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tunnelscope.probes import ProbeConfig, train_probes

    model, label = mlp12(device)
    ds = ts.data.load(MLP_DATA)
    capture = Capture(model, "blocks")

    def features(split, n):
        split = sample_split(split, n, 0)[0]
        out, ys = {k: [] for k in capture.names}, []
        with torch.inference_mode():
            for x, y in split.batches(1024, device=device):
                f = capture(x)
                for k in capture.names:
                    out[k].append(f[k])
                ys.append(y)
        return {k: torch.cat(v) for k, v in out.items()}, torch.cat(ys)

    train, y = features(ds.train, 15000)
    test, yt = features(ds.test, 5000)
    cfg = ProbeConfig(protocol="harun", epochs=epochs)
    tic = time.perf_counter()
    lbfgs = train_probes(train, y, test, yt, ds.num_classes, ProbeConfig(), device=device, progress=False)
    t_lbfgs = time.perf_counter() - tic
    tic = time.perf_counter()
    joint = train_probes(train, y, test, yt, ds.num_classes, cfg, device=device, progress=False)
    sync(device)
    t_joint = time.perf_counter() - tic
    tic = time.perf_counter()
    loop = {k: train_probes({k: train[k]}, y, {k: test[k]}, yt, ds.num_classes, cfg, device=device,
                            progress=False).accuracy[k] for k in capture.names}
    sync(device)
    t_loop = time.perf_counter() - tic
    tic = time.perf_counter()
    plain = {k: plain_probe(train[k], y, test[k], yt, ds.num_classes, cfg) for k in capture.names}
    sync(device)
    t_plain = time.perf_counter() - tic
    tic = time.perf_counter()
    sk = {}
    for k in capture.names:
        scaler = StandardScaler().fit(train[k].cpu().numpy())
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(train[k].cpu().numpy()), y.cpu().numpy())
        sk[k] = clf.score(scaler.transform(test[k].cpu().numpy()), yt.cpu().numpy())
    t_sk = time.perf_counter() - tic
    names = capture.names
    return {"model": label, "data": MLP_DATA, "device": str(device), "points": len(names), "train": len(y),
            "test": len(yt), "epochs": epochs, "joint_s": t_joint, "loop_s": t_loop, "sklearn_s": t_sk,
            "plain_s": t_plain, "speedup_plain": t_plain / t_joint,
            "speedup_loop": t_loop / t_joint, "speedup_sklearn": t_sk / t_joint,
            "max_diff_loop_pp": 100 * max(abs(joint.accuracy[k] - loop[k]) for k in names),
            "max_diff_plain_pp": 100 * max(abs(joint.accuracy[k] - plain[k]) for k in names),
            "mean_acc_joint": float(np.mean([joint.accuracy[k] for k in names])),
            "lbfgs_s": t_lbfgs, "mean_acc_lbfgs": float(np.mean([lbfgs.accuracy[k] for k in names])),
            "lbfgs_converged": len(names) - len(lbfgs.unconverged),
            "max_diff_lbfgs_sklearn_pp": 100 * max(abs(lbfgs.accuracy[k] - sk[k]) for k in names),
            "mean_acc_sklearn": float(np.mean([sk[k] for k in names])),
            "acc_joint": [joint.accuracy[k] for k in names], "acc_sklearn": [sk[k] for k in names]}


def case_probe_widths(device: torch.device, repeats: int, epochs: int = 2, points: int = 4, n: int = 10_000,
                      m: int = 2000) -> dict:
    """The joint harun trainer against the papers' per-layer loop at widths D x classes C, on
    synthetic Gaussian class features (speed only): median of ``repeats`` after a warm-up."""
    from tunnelscope.probes import ProbeConfig, train_probes

    cfg = ProbeConfig(protocol="harun", epochs=epochs)
    rows = []
    for d in (256, 2048):
        for c in (10, 100):
            g = torch.Generator().manual_seed(d + c)
            centres = torch.randn(c, d, generator=g)
            y, yt = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)
            train = {f"p{i}": (centres[y] + 3 * torch.randn(n, d, generator=g)).to(device) for i in range(points)}
            test = {k: (centres[yt] + 3 * torch.randn(m, d, generator=g)).to(device) for k in train}
            y, yt = y.to(device), yt.to(device)

            def joint():
                train_probes(train, y, test, yt, c, cfg, device=device, progress=False)
                sync(device)

            def loop():
                for k in train:
                    plain_probe(train[k], y, test[k], yt, c, cfg)
                sync(device)

            t_joint, t_loop = timed(joint, repeats), timed(loop, repeats)
            rows.append({"dims": d, "classes": c, "joint_s": t_joint, "loop_s": t_loop, "speedup": t_loop / t_joint})
    return {"device": str(device), "points": points, "train": n, "test": m, "epochs": epochs, "repeats": repeats,
            "rows": rows}


def case_invert(device: torch.device, images: int = 4, steps: int = 100) -> dict:
    """Input reconstruction of images × layers in one batched optimisation against the original
    protocol's loop (one image and one layer per run), same starts and steps."""
    from tunnelscope.invert import InvertConfig, invert

    model, label = mlp12(device)
    ds = ts.data.load(MLP_DATA)
    x = next(ds.test.batches(images, device=device))[0]
    names = ts.models.probe_points(model, "blocks")
    cfg = InvertConfig(steps=steps)
    tic = time.perf_counter()
    batched = invert(model, x, names, cfg, device, progress=False)
    sync(device)
    t_batched = time.perf_counter() - tic
    tic = time.perf_counter()
    diffs = []
    for i in range(images):  # the loop starts each run where the batched one started that image
        for name in names:
            alone = invert(model, x[i : i + 1], [name], cfg, device, progress=False,
                           starts=batched.starts[:, i : i + 1])
            diffs.append(float((alone.reconstructions[name][0, 0] - batched.reconstructions[name][0, i]).abs().max()))
    sync(device)
    t_loop = time.perf_counter() - tic
    rows = images * len(names)
    return {"model": label, "device": str(device), "images": images, "points": len(names), "steps": steps,
            "batched_s": t_batched, "loop_s": t_loop, "rows_per_s_batched": rows / t_batched,
            "rows_per_s_loop": rows / t_loop, "speedup": t_loop / t_batched, "max_abs_diff_first_image": diffs[0],
            "max_abs_diff": max(diffs)}


def main() -> None:
    name, device, repeats = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    if name == "stats-mlp12":
        out = case_stats(mlp12, MLP_DATA, device, repeats)
    elif name == "stats-vgg":
        out = case_stats(vgg, VGG_DATA, device, repeats)
    elif name == "cka-mlp12":
        out = case_cka_peer(mlp12, MLP_DATA, "pool2", device, repeats, limit=5000)
    elif name == "cka-mlp12-offset":
        out = case_cka_peer(mlp12, MLP_DATA, "pool2", device, repeats, limit=5000, offset=20.0)
    elif name == "invert-mlp12":
        out = case_invert(device)
    elif name == "probes-mlp12":
        out = case_probes(device, epochs=10)
    elif name == "probes-widths":
        out = case_probe_widths(device, max(3, repeats))
    elif name == "cka-vgg":
        out = case_cka_peer(vgg, VGG_DATA, "flatten", device, max(1, repeats // 2), limit=512)
    else:
        raise SystemExit(f"unknown case {name}")
    out["case"] = name
    print(json.dumps(out))


if __name__ == "__main__":
    main()
