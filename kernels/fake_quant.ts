/**
 * Fake quantization of an activation tensor (quantize to a uniform integer grid, dequantize back
 * to f32), the operation an activation or KV-cache quantizer spec performs at a quantization
 * point of the forward. The grid follows QuaRot's `ActQuantizer` (`quant_utils.py`), itself the
 * GPTQ min–max fit applied per token:
 *
 * - a *unit* is the set of elements sharing one scale: the whole tensor (`tensor`), one row or one
 *   `groupSize` slice of a row (`token`), or one column over all rows (`channel`);
 * - `xmin = min(min(unit), 0) · clip`, `xmax = max(max(unit), 0) · clip`;
 * - symmetric: `maxq = 2^(bits−1) − 1`, `xmax = max(|xmin|, xmax)`, `scale = xmax / maxq`
 *   (1 where xmax = 0), `q = clamp(round(x / scale), −(maxq + 1), maxq)`, `y = scale · q`;
 * - asymmetric: `maxq = 2^bits − 1`, a unit with xmin = xmax = 0 gets [−1, 1],
 *   `scale = (xmax − xmin) / maxq`, `zero = round(−xmin / scale)`,
 *   `q = clamp(round(x / scale) + zero, 0, maxq)`, `y = scale · (q − zero)`;
 * - `bits ≥ 16` leaves the tensor unchanged (QuaRot returns x at 16 bits);
 * - static per-channel scales (`scales[j]`, symmetric, e.g. calibrated `clip · max|x_j| / maxq`)
 *   replace the dynamic fit: `q = clamp(round(x / scales[j]), −(maxq + 1), maxq)`.
 *
 * `round` is round-half-to-even (torch.round and WGSL `round`); every step is f32, in the order
 * above, in both the WGSL and the CPU reference.
 *
 * Binding layout: 0 = uniforms {units, count, cols, gs, mode (0 tensor | 1 token | 2 channel),
 * maxq (f32), sym, clip (f32), stat (0 dynamic | 1 static scales | 2 copy, for bits ≥ 16), rows}, 1 = x [rows, cols] (read), 2 = y (write; with
 * `inPlace` binding 1 is y, read and written, and there is no x), then the scales [cols]
 * (binding 3, or 2 in place; a 16-byte placeholder when not static).
 * Dispatch: one 64-thread workgroup per unit, `units` as an (x, y) grid.
 * @module
 */

/** A fake-quantization spec (plain data; see the module doc for the grid). */
export interface FakeQuantSpec {
  /** Bits, 2–16 (16 = unchanged). */
  bits: number;
  /** Which elements share a scale (default "token": one row, or one group of a row). */
  granularity?: "tensor" | "token" | "channel";
  /** With "token": elements per group along the row (must divide it; default the whole row). */
  groupSize?: number;
  /** Symmetric grid (default true, QuaRot's `a_asym = False`). */
  sym?: boolean;
  /** Clipping ratio applied to the unit's range, in (0, 1] (default 1, QuaRot's `a_clip_ratio`). */
  clip?: number;
  /** Static per-channel scales [cols] (symmetric, granularity "channel"): no dynamic fit. */
  scales?: Float32Array;
  /**
   * The integer grid (default "quarot", the module doc). "deepspeed": DeepSpeed's
   * `SymQuantizer` (ZeroQuant's token-wise dynamic activations): symmetric, `scale = absmax /
   * 2^(bits−1)` (its `2·max|x| / 2^bits`), codes clamped to [−2^(bits−1), 2^(bits−1) − 1].
   * Runs in `fake_quant_sdr.ts`'s kernel.
   */
  grid?: "quarot" | "deepspeed";
  /**
   * QRazor's Significant Data Razoring after the base grid (qllm-infer's `Quantizer` + SDR, see
   * {@linkcode sdrQuantRef}): `bits` kept per value (sign included), `group` values per shift
   * flag over the flattened [rows, cols] tensor. With it, `bits` 16 is an INT16 base grid,
   * not "unchanged". Runs in `fake_quant_sdr.ts`'s kernels.
   */
  qrazor?: { bits: number; group: number };
}

/** Threads per workgroup of the fake-quant kernel. */
export const FAKE_QUANT_WG = 64;

/** The integer range bound `maxq` of a spec (see the module doc). */
export function maxqOf(spec: FakeQuantSpec): number {
  return (spec.sym ?? true) ? 2 ** (spec.bits - 1) - 1 : 2 ** spec.bits - 1;
}

/** Round half to even, as torch.round and WGSL `round` do. */
export function roundEven(x: number): number {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** The unit layout of a spec over a [rows, cols] tensor: units, elements per unit, mode. */
export function fakeQuantUnits(
  spec: FakeQuantSpec,
  rows: number,
  cols: number,
): { units: number; count: number; gs: number; mode: 0 | 1 | 2 } {
  const g = spec.granularity ?? "token";
  if (g === "tensor") return { units: 1, count: rows * cols, gs: cols, mode: 0 };
  if (g === "channel") return { units: cols, count: rows, gs: cols, mode: 2 };
  const gs = spec.groupSize && spec.groupSize > 0 ? spec.groupSize : cols;
  return { units: rows * (cols / gs), count: gs, gs, mode: 1 };
}

/**
 * WGSL shared by the fake-quant kernels (this file's and `fake_quant_sdr.ts`'s): `decls` declares
 * the workgroup min/max arrays and `index(u, e)` (element `e` of unit `u` for the tensor / group /
 * channel modes of the uniform `p`); `reduce` opens `main`'s body: unit `u`, thread `tid`, and the
 * unit's minimum and maximum (with 0 included) in `rmin[0]` / `rmax[0]`. Needs `p`, `xin(i)` and
 * the builtins `wid`, `lid`, `nwg` in scope, and `W` threads per workgroup (a power of two).
 */
export function unitRangeWGSL(W: number): { decls: string; reduce: string } {
  return {
    decls: `var<workgroup> rmin: array<f32, ${W}>;
var<workgroup> rmax: array<f32, ${W}>;

fn index(u: u32, e: u32) -> u32 {
  if (p.mode == 0u) { return e; }
  if (p.mode == 2u) { return e * p.cols + u; }
  let gpr = p.cols / p.gs;
  return (u / gpr) * p.cols + (u % gpr) * p.gs + e;
}
`,
    reduce: `  let u = wid.x + wid.y * nwg.x;
  let tid = lid.x;
  if (u >= p.units) { return; }
  var lo = 0.0;
  var hi = 0.0;
  for (var e = tid; e < p.count; e = e + ${W}u) {
    let v = xin(index(u, e));
    lo = min(lo, v);
    hi = max(hi, v);
  }
  rmin[tid] = lo;
  rmax[tid] = hi;
  workgroupBarrier();
  for (var s = ${W / 2}u; s > 0u; s = s >> 1u) {
    if (tid < s) {
      rmin[tid] = min(rmin[tid], rmin[tid + s]);
      rmax[tid] = max(rmax[tid], rmax[tid + s]);
    }
    workgroupBarrier();
  }
`,
  };
}

/**
 * WGSL of the fake-quant kernel (see the module doc); `inPlace` reads and writes one buffer.
 */
export function fakeQuantWGSL(opts: { inPlace?: boolean } = {}): string {
  const W = FAKE_QUANT_WG;
  const io = opts.inPlace
    ? `@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> sv: array<f32>;
fn xin(i: u32) -> f32 { return y[i]; }`
    : `@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> sv: array<f32>;
fn xin(i: u32) -> f32 { return x[i]; }`;
  return `
struct P { units: u32, count: u32, cols: u32, gs: u32, mode: u32, maxq: f32, sym: u32, clip: f32,
           stat: u32, rows: u32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
${io}
${unitRangeWGSL(W).decls}
@compute @workgroup_size(${W}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
${unitRangeWGSL(W).reduce}  var xmin = rmin[0] * p.clip;
  var xmax = rmax[0] * p.clip;
  var scale = 1.0;
  var zero = 0.0;
  if (p.sym != 0u) {
    xmax = max(abs(xmin), xmax);
    if (xmax != 0.0) { scale = xmax / p.maxq; }
  } else {
    if (xmin == 0.0 && xmax == 0.0) { xmin = -1.0; xmax = 1.0; }
    scale = (xmax - xmin) / p.maxq;
    zero = round(-xmin / scale);
  }
  for (var e = tid; e < p.count; e = e + ${W}u) {
    let i = index(u, e);
    let v = xin(i);
    if (p.stat == 2u) {
      y[i] = v;
    } else if (p.stat == 1u) {
      let s = sv[i % p.cols];
      y[i] = s * clamp(round(v / s), -(p.maxq + 1.0), p.maxq);
    } else if (p.sym != 0u) {
      y[i] = scale * clamp(round(v / scale), -(p.maxq + 1.0), p.maxq);
    } else {
      y[i] = scale * (clamp(round(v / scale) + zero, 0.0, p.maxq) - zero);
    }
  }
}
`;
}

/** The uniform fields of {@linkcode fakeQuantWGSL} for `spec` over [rows, cols]. */
export function fakeQuantFields(
  spec: FakeQuantSpec,
  rows: number,
  cols: number,
): (number | { f: number })[] {
  const { units, count, gs, mode } = fakeQuantUnits(spec, rows, cols);
  const stat = spec.bits >= 16 ? 2 : spec.scales ? 1 : 0;
  return [
    units,
    count,
    cols,
    gs,
    mode,
    { f: maxqOf({ ...spec, bits: Math.min(spec.bits, 16) }) },
    (spec.sym ?? true) ? 1 : 0,
    { f: spec.clip ?? 1 },
    stat,
    rows,
    0,
    0,
  ];
}

/**
 * How the CPU references walk a unit of {@linkcode fakeQuantUnits}: element e of unit u sits at
 * `baseOf(u) + e·step`, `end = count·step`. The tensor (mode 0) and a row's groups (mode 1:
 * ⌊u / groups per row⌋·cols + (u mod groups per row)·gs = u·gs) are contiguous, a channel
 * (mode 2) steps by cols.
 */
function unitWalk(
  u: { count: number; gs: number; mode: 0 | 1 | 2 },
  cols: number,
): { step: number; end: number; baseOf: (u: number) => number } {
  const { count, gs, mode } = u;
  const step = mode === 2 ? cols : 1;
  return {
    step,
    end: count * step,
    baseOf: (i) => (mode === 0 ? 0 : mode === 2 ? i : i * gs),
  };
}

/**
 * One unit's min-max grid in f32, as the kernels: the range over `x[base], x[base + step], …`
 * (always including 0) times `clip`; symmetric: `scale = max(|min|, max) / den` (1 for an all-zero
 * unit); asymmetric: `scale = (max − min) / den`, `zero = round(−min / scale)` ([−1, 1] for an
 * all-zero unit).
 */
function unitGrid(
  x: Float32Array,
  walk: { base: number; end: number; step: number },
  o: { clip: number; sym: boolean; den: number },
): { scale: number; zero: number } {
  const f = Math.fround;
  const { base, end, step } = walk;
  let lo = 0, hi = 0;
  for (let i = base; i < base + end; i += step) {
    const v = x[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  let xmin = f(lo * o.clip), xmax = f(hi * o.clip);
  let scale = 1, zero = 0;
  if (o.sym) {
    xmax = Math.max(Math.abs(xmin), xmax);
    if (xmax !== 0) scale = f(xmax / o.den);
  } else {
    if (xmin === 0 && xmax === 0) [xmin, xmax] = [-1, 1];
    scale = f(f(xmax - xmin) / o.den);
    zero = roundEven(f(-xmin / scale));
  }
  return { scale, zero };
}

/**
 * CPU reference of {@linkcode fakeQuantWGSL}: `x` [rows, cols] fake-quantized by `spec` into a new
 * array (f32 at every step, as the kernel). Assumes a valid spec (the backend checks specs).
 */
export function fakeQuantRef(
  x: Float32Array,
  rows: number,
  cols: number,
  spec: FakeQuantSpec,
): Float32Array {
  if (spec.qrazor || spec.grid === "deepspeed") return sdrQuantRef(x, rows, cols, spec);
  const y = new Float32Array(x);
  if (spec.bits >= 16) return y;
  const f = Math.fround;
  const maxq = maxqOf(spec);
  const sym = spec.sym ?? true;
  const clip = f(spec.clip ?? 1);
  const { units, count, gs, mode } = fakeQuantUnits(spec, rows, cols);
  const { step, end, baseOf } = unitWalk({ count, gs, mode }, cols);
  for (let u = 0; u < units; u++) {
    const base = baseOf(u);
    if (spec.scales) {
      for (let i = base; i < base + end; i += step) {
        const s = spec.scales[i % cols];
        y[i] = f(s * Math.min(Math.max(roundEven(f(x[i] / s)), -(maxq + 1)), maxq));
      }
      continue;
    }
    const { scale, zero } = unitGrid(x, { base, end, step }, { clip, sym, den: maxq });
    for (let i = base; i < base + end; i += step) {
      const r = roundEven(f(x[i] / scale));
      y[i] = sym
        ? f(scale * Math.min(Math.max(r, -(maxq + 1)), maxq))
        : f(scale * (Math.min(Math.max(r + zero, 0), maxq) - zero));
    }
  }
  return y;
}

/** The unit of element `i` of a row-major [rows, cols] tensor (see {@linkcode fakeQuantUnits}). */
export function unitOfElement(i: number, cols: number, gs: number, mode: 0 | 1 | 2): number {
  return mode === 0 ? 0 : mode === 2 ? i % cols : Math.floor(i / gs);
}

/**
 * CPU reference of the two grids beyond QuaRot's (`fake_quant_sdr.ts`'s kernels), f32 at every
 * step as the WGSL:
 *
 * - `grid: "deepspeed"`: per unit `m = max|x|·clip`, `scale = m / 2^(b−1)` (1 where m = 0),
 *   `y = scale · clamp(round(x / scale), −2^(b−1), 2^(b−1) − 1)`;
 * - `qrazor` (qllm-infer's `Quantizer` then SDR, `src/quant/weight_activation/qrazor.ts`): the
 *   QuaRot grid's scale and zero with codes `c = q − zero`, symmetric codes clamped to ±maxq
 *   (qllm-infer's clamp); then per group of `qrazor.group` consecutive codes of the flattened
 *   tensor (the last group shorter): `m = max|c|`; when `m ≥ 2^(r−1)` (r = `qrazor.bits`) and
 *   its leading one `b = ⌊log2 m⌋ + 1 ≤ bits`, every `|c|` becomes `round(|c| / u) · u` with
 *   `u = 2^(b + 1 − r)` (half to even), except that in a group with `m ≥ 2^b − 2^(b−4)` values
 *   `≥ ⌊2^b − 2^(b−4)⌋` are floored (`⌊|c| / u⌋ · u`); sign kept; `y = scale · c` (+0, not −0).
 */
export function sdrQuantRef(
  x: Float32Array,
  rows: number,
  cols: number,
  spec: FakeQuantSpec,
): Float32Array {
  const f = Math.fround;
  const n = rows * cols;
  if (!spec.qrazor && spec.bits >= 16) return new Float32Array(x);
  const y = new Float32Array(n);
  const ds = spec.grid === "deepspeed";
  const sym = ds || (spec.sym ?? true);
  const bits = spec.bits;
  const maxq = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  const den = ds ? 2 ** (bits - 1) : maxq;
  const lower = ds ? -(2 ** (bits - 1)) : -maxq;
  const clip = f(spec.clip ?? 1);
  const { units, count, gs, mode } = fakeQuantUnits(spec, rows, cols);
  // Each unit's range, scale and codes in one walk (the same elements in the same order as a
  // per-element unit lookup).
  const { step, end, baseOf } = unitWalk({ count, gs, mode }, cols);
  const scale = new Float64Array(units);
  // QRazor's SDR pass needs every code before any output; the other grids write y directly.
  const c = spec.qrazor ? new Float64Array(n) : undefined;
  for (let u = 0; u < units; u++) {
    const base = baseOf(u);
    const { scale: s, zero } = unitGrid(x, { base, end, step }, { clip, sym, den });
    scale[u] = s;
    for (let i = base; i < base + end; i += step) {
      const r = roundEven(f(x[i] / s));
      const ci = sym
        ? Math.min(Math.max(r, lower), maxq)
        : Math.min(Math.max(r + zero, 0), maxq) - zero;
      if (c) c[i] = ci;
      else y[i] = f(s * ci) + 0;
    }
  }
  if (!c) return y;
  const rb = spec.qrazor!.bits, group = spec.qrazor!.group;
  for (let g0 = 0; g0 < n; g0 += group) {
    const g1 = Math.min(g0 + group, n);
    let m = 0;
    for (let i = g0; i < g1; i++) m = Math.max(m, Math.abs(c[i]));
    if (m < 2 ** (rb - 1)) continue;
    const b = 32 - Math.clz32(m); // m ∈ [2^(b−1), 2^b)
    if (b > bits) continue;
    const unit = 2 ** (b + 1 - rb);
    const edge = 2 ** b - 2 ** (b - 4);
    const floorFrom = m >= edge ? Math.floor(edge) : Infinity;
    for (let i = g0; i < g1; i++) {
      const a = Math.abs(c[i]);
      const k = a >= floorFrom ? Math.floor(a / unit) : roundEven(a / unit);
      c[i] = Math.sign(c[i]) * k * unit;
    }
  }
  for (let u = 0; u < units; u++) {
    const base = baseOf(u), s = scale[u];
    for (let i = base; i < base + end; i += step) y[i] = f(s * c[i]) + 0;
  }
  return y;
}
