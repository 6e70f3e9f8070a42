"""PyTorch peers for bench/gpu_bench.ts, timed with CUDA events on the same GPU in the same call.

Prints one JSON line (last line of stdout) with seconds per call:
  matmul_f32_s (TF32 off), matmul_f16_s, gemv_f16_s (fp16 weights, batch 1), copy_s (copy_ of the
  same byte count as the WebGPU copy benchmark), gptq_s (the IST-DASLab fasterquant inner loop with
  lazy block updates, given Hinv, per-row grid, block 128: the same work as the fused WebGPU path),
  hinv_s (fasterquant's Hinv: cholesky, cholesky_inverse, upper cholesky, float32).
Usage: python3 bench/_torch_peer.py [--quick]
"""
import json
import sys

import torch


def timed(fn, reps=10, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = []
    for _ in range(3):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        best.append(start.elapsed_time(end) / 1e3 / reps)
    best.sort()
    return best[1]


def gptq_loop(W, Hinv, scale, zero, maxq, blocksize=128):
    """fasterquant's loop without the Hessian part (W updated in place); scale/zero [rows, groups]
    with groups of `blocksize` columns (static groups)."""
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        g = i1 // blocksize
        sc, ze = scale[:, g], zero[:, g]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = torch.clamp(torch.round(w / sc) + ze, 0, maxq)
            q = sc * (q - ze)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def main():
    quick = "--quick" in sys.argv
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n = 256 if quick else 4096
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    a = torch.rand(n, n, device=dev) * 2 - 1
    b = torch.rand(n, n, device=dev) * 2 - 1
    out["matmul_f32_s"] = timed(lambda: torch.matmul(a, b))
    a16, b16 = a.half(), b.half()
    out["matmul_f16_s"] = timed(lambda: torch.matmul(a16, b16))
    rows, cols = (1024, 1024) if quick else (44032, 4096)
    w16 = (torch.rand(rows, cols, device=dev) - 0.5).half()
    x16 = torch.rand(cols, 1, device=dev).half()
    out["gemv_f16_s"] = timed(lambda: torch.matmul(w16, x16), reps=50)
    del w16
    nbytes = 16 * 2**20 if quick else 2**30
    src = torch.rand(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    out["copy_s"] = timed(lambda: dst.copy_(src), reps=5)
    del src, dst
    W = torch.rand(n, n, device=dev) * 2 - 1
    Hinv = torch.triu((torch.rand(n, n, device=dev) - 0.5) * (0.5 / n**0.5), 1)
    Hinv += torch.diag(0.5 + torch.rand(n, device=dev))
    maxq = 15
    # g128 static grids, as the WebGPU benchmark
    Wg = W.view(n, n // 128, 128)
    mn = torch.clamp(Wg.min(2).values, max=0)
    mx = torch.clamp(Wg.max(2).values, min=0)
    scale = (mx - mn) / maxq
    zero = torch.round(-mn / scale)
    out["gptq_s"] = timed(lambda: gptq_loop(W.clone(), Hinv, scale, zero, maxq), reps=1, warm=1)
    # fasterquant's Hinv: cholesky, cholesky_inverse, cholesky(upper) in float32
    X = torch.randn(n + 256, n, device=dev)
    H = 2 / (n + 256) * X.T.matmul(X)
    H += 0.01 * torch.mean(torch.diag(H)) * torch.eye(n, device=dev)

    def hinv():
        L = torch.linalg.cholesky(H)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    out["hinv_s"] = timed(hinv, reps=3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
