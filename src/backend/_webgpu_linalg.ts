/**
 * Dense linear algebra on the GPU in float32: GPTQ's `Hinv`, the upper `U` with `Uᵀ·U = H⁻¹`
 * for a symmetric positive definite `H` (the matrix of `upperCholeskyOfInverse` in
 * `src/quant/core/linalg.ts`, which computes it in float64 on the CPU).
 *
 * Algorithm (blocks of `nb`, from the bottom-right corner up; `kernels/cholesky.ts`):
 * 1. `H = V·Vᵀ` with `V` upper (UL Cholesky; with `J` the index reversal, `V = J·L'·J` for
 *    `J·H·J = L'·L'ᵀ`). Per block i: the diagonal kernel factors `H_ii` in workgroup memory and
 *    writes `V_ii⁻¹`; the panel `V[:i0, i] = H[:i0, i]·V_ii⁻ᵀ` and the trailing update
 *    `H[:i0, :i0] −= V[:i0, i]·V[:i0, i]ᵀ` are tiled matmuls.
 * 2. `U = V⁻¹` (upper), right-looking from the bottom with a right-hand side `B = I`: per block
 *    row i, `U[i, i0:] = V_ii⁻¹·B[i, i0:]` and `B[:i0, i0:] −= V[:i0, i]·U[i, i0:]`, both matmuls.
 *
 * Buffers: R (n × n, the work copy of H, then B), U (n × n, the output; it holds the panels of V
 * until block row i of U replaces them, which is after their last use), D (n × nb, the stacked
 * `V_ii⁻¹`), status (4 u32). WebGPU forbids binding one buffer as both read-only and writable
 * storage in a dispatch, so every matmul reads from one of R, U and writes the other. Flops: about
 * `n³` on the tiled kernel (`2n³/3` trailing update, computed over full squares, and `n³/3` for
 * the inverse); `5·⌈n/nb⌉` dispatches (one fewer in place), in one submission.
 *
 * Limit: R and U are bound whole, so `n² · 4` bytes must fit in `maxStorageBufferBindingSize` (and
 * `maxBufferSize`): n ≤ 8192 at 256 MiB, n ≤ 23170 at 2 GiB ({@linkcode maxCholeskyOrder}).
 *
 * Errors: a pivot that is not positive, normal and finite is recorded in the status buffer.
 * {@linkcode gpuUpperCholeskyOfInverse} throws {@linkcode CholeskyPivotError} (a
 * `NonFiniteError`) naming it; {@linkcode upperCholeskyOfInverseDispatches} leaves the check to
 * its caller ({@linkcode decodeCholeskyStatus}, {@linkcode checkCholeskyStatus}) since the caller
 * reads the status back with its own results.
 * @module
 */
import { NonFiniteError, UnsupportedError } from "../errors.ts";
import {
  CHOLESKY_HELPER_WORKGROUP,
  CHOLESKY_MAX_BLOCK,
  choleskyBlocks,
  choleskyDiagSharedBytes,
  choleskyDiagWGSL,
  matrixCopyWGSL,
  matrixIdentityWGSL,
} from "../../kernels/cholesky.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  runAndReadAll,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";
import { matmulDispatch } from "./_webgpu_matmul.ts";

/** Decoded status of a GPU factorization. */
export interface CholeskyStatus {
  /** True when every pivot was positive, normal and finite. */
  ok: boolean;
  /** First failing pivot in factorization order (as the CPU `upperCholeskyOfInverse`); −1 if ok. */
  pivot: number;
  /** The row of H of that pivot (`n − 1 − pivot`); −1 if ok. */
  row: number;
  /** The failing pivot's float32 value (NaN if ok). */
  value: number;
}

/** A Cholesky pivot failed on the GPU: `H` is not numerically positive definite in float32. */
export class CholeskyPivotError extends NonFiniteError {
  /** Pivot in factorization order (the index `NotPositiveDefiniteError` reports on the CPU). */
  readonly pivot: number;
  /** Row of H of the pivot. */
  readonly row: number;
  /** The pivot's value. */
  readonly value: number;
  /** Creates the error from a failed status. */
  constructor(status: CholeskyStatus) {
    super(
      `matrix is not positive definite: Cholesky pivot ${status.pivot} (row ${status.row} of H)` +
        ` is ${status.value} in float32`,
    );
    this.pivot = status.pivot;
    this.row = status.row;
    this.value = status.value;
  }
}

/** Options of the GPU factorization. */
export interface UpperCholeskyOfInverseOptions {
  /** Diagonal block size nb, 1–128 (default 64, or the largest that fits workgroup memory). */
  block?: number;
  /** Use the H buffer as the work matrix (it is overwritten) instead of an n × n scratch copy. */
  inPlace?: boolean;
}

/** The dispatches of one factorization and the buffers it owns. */
export interface UpperCholeskyOfInversePlan {
  /** Dispatches, in order; record them in one pass (or append them to the caller's). */
  dispatches: Dispatch[];
  /** Status, u32 [4] `{failed, pivot, row, pivot bits}`, zero at creation; decode with
   * {@linkcode decodeCholeskyStatus}. One plan is for one run: a failure stays recorded. */
  status: GPUBuffer;
  /** Returns the plan's scratch and status buffers to the pool (after the work has run). */
  release(): void;
}

/** Largest n whose n × n float32 matrix fits one storage binding of the device. */
export function maxCholeskyOrder(ctx: WebGPUContext): number {
  const l = ctx.device.limits;
  const bytes = Math.min(l.maxStorageBufferBindingSize, l.maxBufferSize);
  return Math.floor(Math.sqrt(bytes / 4));
}

function blockSize(ctx: WebGPUContext, want: number | undefined): number {
  const wg = ctx.device.limits.maxComputeWorkgroupStorageSize;
  if (want !== undefined) {
    if (!(Number.isInteger(want) && want >= 1 && want <= CHOLESKY_MAX_BLOCK)) {
      throw new RangeError(
        `cholesky: block ${want} must be an integer in 1..${CHOLESKY_MAX_BLOCK}`,
      );
    }
    if (choleskyDiagSharedBytes(want) > wg) {
      throw new UnsupportedError(
        `cholesky: block ${want} needs ${choleskyDiagSharedBytes(want)} B of workgroup memory, ` +
          `the device has ${wg} B`,
      );
    }
    return want;
  }
  let nb = 64;
  while (choleskyDiagSharedBytes(nb) > wg) nb >>= 1;
  return nb;
}

function checkOrder(ctx: WebGPUContext, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`cholesky: n = ${n} is not a size`);
  const max = maxCholeskyOrder(ctx);
  if (n > max) {
    throw new UnsupportedError(
      `cholesky: a ${n}×${n} float32 matrix (${n * n * 4} B) exceeds the device's storage ` +
        `binding limit (maxStorageBufferBindingSize ${ctx.device.limits.maxStorageBufferBindingSize}` +
        ` B); the largest order is ${max}`,
    );
  }
}

/** A dispatch copying `count` f32 of `src` into `dst` (`matrixCopyWGSL`). */
export function copyDispatch(
  ctx: WebGPUContext,
  src: GPUBuffer,
  dst: GPUBuffer,
  count: number,
): Dispatch {
  const pipe = pipeline(ctx, matrixCopyWGSL());
  const u = uniforms(ctx, [count, 0, 0, 0]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, src, dst]),
    workgroups: grid(ctx, Math.ceil(count / CHOLESKY_HELPER_WORKGROUP)),
  };
}

function identityDispatch(ctx: WebGPUContext, dst: GPUBuffer, n: number, d: number): Dispatch {
  const pipe = pipeline(ctx, matrixIdentityWGSL());
  const u = uniforms(ctx, [n * n, n, { f: d }, 0]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, dst]),
    workgroups: grid(ctx, Math.ceil((n * n) / CHOLESKY_HELPER_WORKGROUP)),
  };
}

function diagDispatch(
  ctx: WebGPUContext,
  bufs: { r: GPUBuffer; d: GPUBuffer; status: GPUBuffer },
  o: { n: number; i0: number; b: number; nb: number },
): Dispatch {
  const pipe = pipeline(ctx, choleskyDiagWGSL({ nb: o.nb }));
  const u = uniforms(ctx, [o.n, o.i0, o.b, o.nb]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, bufs.r, bufs.d, bufs.status]),
    workgroups: [1, 1, 1],
  };
}

/** Step 1 for block [i0, i0+b): diagonal factor, panel of V (into U), trailing update of R. */
function factorBlock(
  ctx: WebGPUContext,
  bufs: { r: GPUBuffer; u: GPUBuffer; d: GPUBuffer; status: GPUBuffer },
  o: { n: number; i0: number; b: number; nb: number },
): Dispatch[] {
  const { n, i0, b, nb } = o;
  const out = [diagDispatch(ctx, bufs, o)];
  if (i0 === 0) return out;
  out.push(
    matmulDispatch(ctx, { a: bufs.r, b: bufs.d, c: bufs.u }, {
      m: i0,
      k: b,
      n: b,
      transB: true,
      lda: n,
      ldb: nb,
      ldc: n,
      offA: i0,
      offB: i0 * nb,
      offC: i0,
    }),
    matmulDispatch(ctx, { a: bufs.u, b: bufs.u, c: bufs.r }, {
      m: i0,
      k: b,
      n: i0,
      transB: true,
      lda: n,
      ldb: n,
      ldc: n,
      offA: i0,
      offB: i0,
      alpha: -1,
      beta: 1,
    }),
  );
  return out;
}

/** Step 2 for block row [i0, i0+b): `U[i, i0:] = V_ii⁻¹·B[i, i0:]`, `B[:i0, i0:] −= V·U[i, i0:]`. */
function invertBlock(
  ctx: WebGPUContext,
  bufs: { r: GPUBuffer; u: GPUBuffer; d: GPUBuffer },
  o: { n: number; i0: number; b: number; nb: number },
): Dispatch[] {
  const { n, i0, b, nb } = o;
  const w = n - i0;
  const out = [
    matmulDispatch(ctx, { a: bufs.d, b: bufs.r, c: bufs.u }, {
      m: b,
      k: b,
      n: w,
      lda: nb,
      ldb: n,
      ldc: n,
      offA: i0 * nb,
      offB: i0 * n + i0,
      offC: i0 * n + i0,
    }),
  ];
  if (i0 === 0) return out;
  out.push(
    matmulDispatch(ctx, { a: bufs.u, b: bufs.u, c: bufs.r }, {
      m: i0,
      k: b,
      n: w,
      lda: n,
      ldb: n,
      ldc: n,
      offA: i0,
      offB: i0 * n + i0,
      offC: i0,
      alpha: -1,
      beta: 1,
    }),
  );
  return out;
}

/**
 * The dispatches computing `U` (upper, `Uᵀ·U = H⁻¹`) from the resident `H` into the resident
 * `U`, both f32 [n, n] row-major buffers of at least `n²·4` bytes (only H's upper triangle is
 * read). Nothing is submitted: record `dispatches` in one pass, alone or after the caller's own
 * work, and read `status` back with the results (a failed pivot leaves U undefined). H is kept
 * unless `inPlace`. Throws {@linkcode UnsupportedError} when `n²·4` bytes exceed the storage
 * binding limit (see {@linkcode maxCholeskyOrder}).
 */
export function upperCholeskyOfInverseDispatches(
  ctx: WebGPUContext,
  bufs: { h: GPUBuffer; u: GPUBuffer },
  n: number,
  opts: UpperCholeskyOfInverseOptions = {},
): UpperCholeskyOfInversePlan {
  checkOrder(ctx, n);
  const nb = blockSize(ctx, opts.block);
  const status = upload(ctx, new Uint32Array(4));
  const d = scratch(ctx, Math.max(1, n * nb) * 4);
  const r = opts.inPlace ? bufs.h : scratch(ctx, Math.max(1, n * n) * 4);
  const release = () => ctx.pool.release(status, d, ...(opts.inPlace ? [] : [r]));
  if (n === 0) return { dispatches: [], status, release };
  const all = { r, u: bufs.u, d, status };
  const dispatches: Dispatch[] = [];
  if (!opts.inPlace) dispatches.push(copyDispatch(ctx, bufs.h, r, n * n));
  dispatches.push(identityDispatch(ctx, bufs.u, n, 0));
  const blocks = choleskyBlocks(n, nb);
  for (const [i0, b] of blocks) dispatches.push(...factorBlock(ctx, all, { n, i0, b, nb }));
  dispatches.push(identityDispatch(ctx, r, n, 1));
  for (const [i0, b] of blocks) dispatches.push(...invertBlock(ctx, all, { n, i0, b, nb }));
  return { dispatches, status, release };
}

/** Decodes the 16 status bytes of {@linkcode UpperCholeskyOfInversePlan.status}. */
export function decodeCholeskyStatus(bytes: ArrayBuffer): CholeskyStatus {
  const u = new Uint32Array(bytes, 0, 4);
  if (u[0] === 0) return { ok: true, pivot: -1, row: -1, value: NaN };
  return { ok: false, pivot: u[1], row: u[2], value: new Float32Array(bytes, 12, 1)[0] };
}

/** Throws {@linkcode CholeskyPivotError} when `status` records a failed pivot. */
export function checkCholeskyStatus(status: CholeskyStatus): void {
  if (!status.ok) throw new CholeskyPivotError(status);
}

/**
 * `U` (upper, `Uᵀ·U = H⁻¹`) of the SPD `H` (f32 [n, n], upper triangle read) on the GPU in
 * float32: one upload, one submission, one readback of U and the status. Throws
 * {@linkcode CholeskyPivotError} (a `NonFiniteError`) naming the first failing pivot, and
 * {@linkcode UnsupportedError} past {@linkcode maxCholeskyOrder}.
 */
export async function gpuUpperCholeskyOfInverse(
  ctx: WebGPUContext,
  H: Float32Array,
  n: number,
  opts: Omit<UpperCholeskyOfInverseOptions, "inPlace"> = {},
): Promise<Float32Array> {
  if (H.length !== n * n) {
    throw new RangeError(`gpuUpperCholeskyOfInverse: expected ${n}×${n} values, got ${H.length}`);
  }
  checkOrder(ctx, n);
  if (n === 0) return new Float32Array(0);
  const h = upload(ctx, H), u = scratch(ctx, n * n * 4);
  let plan: UpperCholeskyOfInversePlan | undefined;
  try {
    plan = upperCholeskyOfInverseDispatches(ctx, { h, u }, n, { ...opts, inPlace: true });
    const [ub, sb] = await runAndReadAll(ctx, plan.dispatches, [
      { buffer: u, bytes: n * n * 4 },
      { buffer: plan.status, bytes: 16 },
    ]);
    checkCholeskyStatus(decodeCholeskyStatus(sb));
    return new Float32Array(ub);
  } finally {
    plan?.release();
    ctx.pool.release(h, u);
  }
}
