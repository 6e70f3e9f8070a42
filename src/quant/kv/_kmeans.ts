/**
 * Weighted one-dimensional k-means (Lloyd's algorithm) for KVQuant's non-uniform codebooks, and
 * the nearest-codebook-entry rounding the cache uses.
 *
 * The reference (SqueezeAILab/KVQuant `SimQuant.quantize`) fits
 * `sklearn.cluster.KMeans(n_clusters = 2^bits, random_state = 0, n_init = "auto", max_iter = 50)`
 * with `sample_weight` = the Fisher information. Deviation, on purpose: the centroids start from the
 * uniform grid (`2^bits` evenly spaced points on [−1, 1], i.e. the uniform quantizer of the same
 * normalized range) instead of k-means++, so the result is deterministic and, since neither Lloyd
 * step can raise the weighted squared error, never worse than the uniform grid on the data it is
 * fitted on. In one dimension the assignment step is a split of the sorted values at the midpoints
 * between consecutive centroids, done here with prefix sums (O(k log n) per iteration).
 * @module
 */

/** The `k` evenly spaced points −1 … 1 (the uniform grid of a normalized range). */
export function uniformGrid(k: number): Float64Array {
  const g = new Float64Array(k);
  for (let i = 0; i < k; i++) g[i] = k === 1 ? 0 : -1 + (2 * i) / (k - 1);
  return g;
}

/** Index of the entry of `lut` nearest to `u` (the first one on a tie, as torch's argmin). */
export function nearestIndex(u: number, lut: Float32Array | Float64Array, o = 0, k = lut.length) {
  let best = 0;
  let bd = Infinity;
  for (let i = 0; i < k; i++) {
    const d = Math.abs(u - lut[o + i]);
    if (d < bd) {
      bd = d;
      best = i;
    }
  }
  return best;
}

/** Σ w·(x − nearest centroid)² over the values. */
export function weightedError(
  x: Float64Array | Float32Array,
  w: Float64Array | Float32Array | undefined,
  centroids: Float64Array | Float32Array,
): number {
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    const c = centroids[nearestIndex(x[i], centroids)];
    e += (w ? w[i] : 1) * (x[i] - c) ** 2;
  }
  return e;
}

/**
 * Fits `k` centroids to the values `x` with weights `w` (all 1 when undefined), starting from
 * {@linkcode uniformGrid}; at most `maxIter` Lloyd iterations (the reference's 50). An empty
 * cluster keeps its centroid. Returns the centroids in ascending order.
 */
export function weightedKMeans1d(
  x: Float64Array | Float32Array,
  w: Float64Array | Float32Array | undefined,
  k: number,
  maxIter = 50,
): Float64Array {
  const n = x.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => x[a] - x[b]);
  const xs = new Float64Array(n);
  const pw = new Float64Array(n + 1);
  const pwx = new Float64Array(n + 1);
  for (let r = 0; r < n; r++) {
    const i = order[r];
    const wi = w ? w[i] : 1;
    xs[r] = x[i];
    pw[r + 1] = pw[r] + wi;
    pwx[r + 1] = pwx[r] + wi * x[i];
  }
  // First sorted index with xs[idx] > v (values at a midpoint go to the lower centroid, as the
  // nearest-index rule does on a tie).
  const upper = (v: number) => {
    let lo = 0, hi = n;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      if (xs[m] <= v) lo = m + 1;
      else hi = m;
    }
    return lo;
  };
  const c = uniformGrid(k);
  for (let it = 0; it < maxIter; it++) {
    let moved = false;
    let start = 0;
    for (let j = 0; j < k; j++) {
      const end = j === k - 1 ? n : upper((c[j] + c[j + 1]) / 2);
      const sw = pw[end] - pw[start];
      if (end > start && sw > 0) {
        const m = (pwx[end] - pwx[start]) / sw;
        if (m !== c[j]) moved = true;
        c[j] = m;
      }
      start = end;
    }
    if (!moved) break;
    c.sort();
  }
  return c;
}
