/**
 * Plain TypeScript matrix products: the fallback for tiny shapes (where a native call costs more
 * than the math) and the CPU reference that tests pin other paths to.
 * @module
 */

/** C[m,n] = A[m,k] · B[k,n], row-major. Accumulates in float32 order of k (i-k-j loop). */
export function matmulTS(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
): Float32Array {
  const c = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    const ci = i * n;
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p];
      if (av === 0) continue;
      const bp = p * n;
      for (let j = 0; j < n; j++) c[ci + j] += av * b[bp + j];
    }
  }
  return c;
}

/** C[m,n] = A[m,k] · B[n,k]ᵀ, row-major (dot products in float64). */
export function matmulTransBTS(
  a: Float32Array,
  b: Float32Array,
  m: number,
  k: number,
  n: number,
): Float32Array {
  const c = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    const ai = i * k;
    for (let j = 0; j < n; j++) {
      const bj = j * k;
      let s = 0;
      for (let p = 0; p < k; p++) s += a[ai + p] * b[bj + p];
      c[i * n + j] = s;
    }
  }
  return c;
}
