"""CPU PyTorch peer for bench/gptq_bench.ts: GPTQ 4-bit, groupSize 128, act-order, blocksize 128,
lazy batch updates, as IST-DASLab/gptq `fasterquant` does it (Hinv through float32 Cholesky,
cholesky_inverse, upper Cholesky; per-group asymmetric min-max grid), timed on the same shapes
with a random SPD Hessian of the same construction. Written independently for timing only.
Usage: python3 bench/_gptq_torch_cpu.py [--quick] [--threads N] [--serve]
Prints one line per shape: rows cols total_s hinv_s. With --serve: reads "rows cols" lines on
stdin and answers each with one JSON line {rows, cols, total_s, hinv_s, cpu_s} (bench/gptq_bench.ts;
cpu_s: process CPU seconds, time.process_time).
"""
import json
import sys
import time

import torch


def grid_params(w, maxq):
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    both0 = (lo == 0) & (hi == 0)
    lo[both0], hi[both0] = -1, 1
    scale = (hi - lo) / maxq
    zero = torch.round(-lo / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def qdq(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def gptq(W, H, bits=4, group=128, block=128, percdamp=0.01):
    maxq = 2**bits - 1
    W = W.clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    t0 = time.perf_counter()
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    hinv_s = time.perf_counter() - t0
    Q = torch.zeros_like(W)
    scale = zero = None
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        Hb = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hb[i, i]
            if (i1 + i) % group == 0:
                scale, zero = grid_params(W[:, i1 + i:i1 + i + group], maxq)
            q = qdq(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            e = (w - q) / d
            W1[:, i:] -= e.unsqueeze(1).matmul(Hb[i, i:].unsqueeze(0))
            E1[:, i] = e
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1.matmul(Hinv[i1:i2, i2:])
    return Q[:, torch.argsort(perm)], hinv_s


def run_shape(rows, cols):
    n = cols + 256
    X = torch.randn(n, cols) * torch.exp(0.5 * torch.randn(cols))
    H = 2 / n * X.T.matmul(X) + 1e-2 * torch.eye(cols)
    W = 0.02 * torch.randn(rows, cols)
    del X
    t, c = time.perf_counter(), time.process_time()
    _, hinv_s = gptq(W, H)
    return time.perf_counter() - t, hinv_s, time.process_time() - c


def blas_library():
    """The BLAS shared object torch loaded (Debian's torch links libblas.so.3, an alternative:
    the reference BLAS, or OpenBLAS when libopenblas0-pthread is installed)."""
    torch.ones(2, 2) @ torch.ones(2, 2)
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "blas" in line.lower()}
    return ", ".join(sorted(libs)) or "unknown"


def main():
    quick = "--quick" in sys.argv
    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    torch.manual_seed(0)
    if "--serve" in sys.argv:
        # One shape per stdin line "rows cols"; one JSON line per shape on stdout.
        print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "blas": blas_library()}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            rows, cols = map(int, line.split())
            total, hinv_s, cpu_s = run_shape(rows, cols)
            print(json.dumps({"rows": rows, "cols": cols, "total_s": total, "hinv_s": hinv_s,
                              "cpu_s": cpu_s}), flush=True)
        return
    shapes = [(768, 768), (3072, 768), (768, 3072), (4096, 4096)]
    for rows, cols in shapes:
        if quick and rows * cols > 4e6:
            continue
        total, hinv_s, _ = run_shape(rows, cols)
        print(f"{rows}x{cols} total {total:.3f} s, Hinv {hinv_s:.3f} s "
              f"(threads {torch.get_num_threads()})", flush=True)


main()
