/**
 * Hessian preparation shared by the second-order quantizers, as the reference `fasterquant`
 * (IST-DASLab/gptq `gptq.py`) does it before its column loop:
 *
 * - dead inputs: `H_ii = 0` → `H_ii = 1` and the weight column zeroed ({@linkcode deadInputs});
 * - act-order: columns by descending `diag(H)`, a stable sort ({@linkcode actOrderPermutation});
 * - damping: `percdamp · mean(diag H)`, the mean summed in processed order ({@linkcode dampening});
 * - `H` in processed order with the damped diagonal, float64 ({@linkcode processedHessian}).
 *
 * Plus the one stopwatch quantizers time their steps with ({@linkcode stopwatch}).
 * @module
 */

/** The diagonal of `H` with dead inputs set to 1, and the dead inputs' (original) indices. */
export interface DeadInputs {
  /** `diag(H)` in original order, float64, `H_ii = 0` replaced by 1. */
  diag: Float64Array;
  /** Original indices `i` with `H_ii = 0`, ascending. */
  dead: number[];
}

/** Reads `diag(H)` (`cols × cols`, row-major) and marks dead inputs (`H_ii = 0` → 1). */
export function deadInputs(H: ArrayLike<number>, cols: number): DeadInputs {
  const d = new Float64Array(cols);
  for (let i = 0; i < cols; i++) d[i] = H[i * cols + i];
  return deadInputsOfDiagonal(d);
}

/**
 * {@linkcode deadInputs} from `diag(H)` alone (e.g. read back from a device that holds H): the
 * same result as `deadInputs(H, d.length)`.
 */
export function deadInputsOfDiagonal(d: ArrayLike<number>): DeadInputs {
  const cols = d.length;
  const diag = new Float64Array(cols);
  const dead: number[] = [];
  for (let i = 0; i < cols; i++) {
    diag[i] = d[i];
    if (diag[i] === 0) {
      diag[i] = 1;
      dead.push(i);
    }
  }
  return { diag, dead };
}

/** `W` (`rows × cols`) with the `dead` columns zeroed: a copy, or `W` itself when none are dead. */
export function zeroDeadColumns(
  W: Float32Array,
  options: { rows: number; cols: number; dead: number[] },
): Float32Array {
  const { rows, cols, dead } = options;
  if (!dead.length) return W;
  const W0 = W.slice();
  for (const i of dead) for (let r = 0; r < rows; r++) W0[r * cols + i] = 0;
  return W0;
}

/** Act-order: processed column `c` is original column `perm[c]`, by descending `diag` (stable). */
export function actOrderPermutation(diag: Float64Array): Int32Array {
  return Int32Array.from(
    Array.from({ length: diag.length }, (_, i) => i).sort((a, b) => diag[b] - diag[a]),
  );
}

/** The damping `percdamp · mean(diag)`, the mean summed in processed order (as the reference). */
export function dampening(diag: Float64Array, options: { percdamp: number; perm?: Int32Array }) {
  const { percdamp, perm } = options, cols = diag.length;
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += diag[perm ? perm[i] : i];
  return (percdamp * mean) / cols;
}

/**
 * `H` (`cols × cols`) in processed order as float64, its diagonal replaced by `diag + damp`
 * (`diag` with dead inputs already set to 1, in original order).
 */
export function processedHessian(
  H0: ArrayLike<number>,
  options: { diag: Float64Array; damp: number; perm?: Int32Array },
): Float64Array {
  const { diag, damp, perm } = options, cols = diag.length;
  const H = new Float64Array(cols * cols);
  if (perm) {
    for (let i = 0; i < cols; i++) {
      const src = perm[i] * cols, dst = i * cols;
      for (let j = 0; j < cols; j++) H[dst + j] = H0[src + perm[j]];
    }
  } else {
    H.set(H0);
  }
  for (let i = 0; i < cols; i++) H[i * cols + i] = diag[perm ? perm[i] : i] + damp;
  return H;
}

/** The columns of `W` (`rows × cols`) in processed order: `Wc[r, c] = W[r, perm[c]]` (a copy). */
export function permuteColumns(
  W: Float32Array,
  options: { rows: number; cols: number; perm?: Int32Array },
): Float32Array {
  const { rows, cols, perm } = options;
  if (!perm) return W.slice();
  const Wc = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const rr = r * cols;
    for (let c = 0; c < cols; c++) Wc[rr + c] = W[rr + perm[c]];
  }
  return Wc;
}

/** A stopwatch over a timings record: `lap(key)` adds the seconds since the last lap to it. */
export interface Stopwatch<K extends string> {
  /** Adds the seconds since the last lap (or start / restart) to `timings[key]`. */
  lap(key: K): void;
  /** Starts the next lap now without charging the time since the last one. */
  restart(): void;
}

/** A {@linkcode Stopwatch} charging seconds into the numeric fields of `timings`. */
export function stopwatch<K extends string>(timings: Record<K, number>): Stopwatch<K> {
  let t = performance.now();
  return {
    lap(key) {
      const now = performance.now();
      timings[key] += (now - t) / 1000;
      t = now;
    },
    restart() {
      t = performance.now();
    },
  };
}
