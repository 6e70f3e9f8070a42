/**
 * The kernels of the fake-quant grids beyond QuaRot's (`fake_quant.ts`): DeepSpeed's symmetric
 * grid (`grid: "deepspeed"`, ZeroQuant's token-wise activations) and QRazor's Significant Data
 * Razoring (`qrazor`). The arithmetic is {@linkcode sdrQuantRef}'s (the CPU reference, f32 at
 * every step; WGSL `round` rounds half to even).
 *
 * Two passes:
 * 1. {@linkcode sdrGridWGSL}: one 64-thread workgroup per unit (as the fake-quant kernel) finds
 *    the unit's range and scale, then writes either `y = scale · code` (DeepSpeed, `codes` 0) or
 *    the integer code `c = q − zero` (as f32, exact below 2^24) with the unit's scale in `su[u]`
 *    (`codes` 1). Bindings: 0 = uniforms {units, count, cols, gs, mode, maxq (f32), sym, clip
 *    (f32), codes, rows, den (f32), lower (f32)}, 1 = x (read), 2 = y, 3 = su [units]
 *    (read_write); in place: 1 = y, 2 = su.
 * 2. {@linkcode sdrRazorWGSL} (QRazor only): one thread per SDR group of the flattened tensor
 *    razors the codes in place and dequantizes them with their unit's scale. Bindings: 0 =
 *    uniforms {n, group, cols, gs, mode, rbit, qbit, ngroups}, 1 = y (read_write), 2 = su (read).
 *    Dispatch: ⌈ngroups / 64⌉ workgroups as an (x, y) grid.
 * @module
 */
import {
  FAKE_QUANT_WG,
  type FakeQuantSpec,
  fakeQuantUnits,
  maxqOf,
  unitRangeWGSL,
} from "./fake_quant.ts";

export { sdrQuantRef } from "./fake_quant.ts";

/** Threads per workgroup of {@linkcode sdrRazorWGSL}. */
export const SDR_RAZOR_WG = 64;

/** Whether `spec` runs in these kernels (a DeepSpeed grid or QRazor SDR) rather than QuaRot's. */
export function isSdrSpec(spec: FakeQuantSpec): boolean {
  return spec.grid === "deepspeed" || spec.qrazor !== undefined;
}

/** WGSL of pass 1 (see the module doc); `inPlace` reads and writes one buffer. */
export function sdrGridWGSL(opts: { inPlace?: boolean } = {}): string {
  const W = FAKE_QUANT_WG;
  const io = opts.inPlace
    ? `@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> su: array<f32>;
fn xin(i: u32) -> f32 { return y[i]; }`
    : `@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> su: array<f32>;
fn xin(i: u32) -> f32 { return x[i]; }`;
  return `
struct P { units: u32, count: u32, cols: u32, gs: u32, mode: u32, maxq: f32, sym: u32, clip: f32,
           codes: u32, rows: u32, den: f32, lower: f32 };
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
    if (xmax != 0.0) { scale = xmax / p.den; }
  } else {
    if (xmin == 0.0 && xmax == 0.0) { xmin = -1.0; xmax = 1.0; }
    scale = (xmax - xmin) / p.den;
    zero = round(-xmin / scale);
  }
  if (tid == 0u && p.codes != 0u) { su[u] = scale; }
  for (var e = tid; e < p.count; e = e + ${W}u) {
    let i = index(u, e);
    let r = round(xin(i) / scale);
    var c: f32;
    if (p.sym != 0u) {
      c = clamp(r, p.lower, p.maxq);
    } else {
      c = clamp(r + zero, 0.0, p.maxq) - zero;
    }
    if (p.codes != 0u) {
      y[i] = c;
    } else {
      let v = scale * c;
      y[i] = select(v, 0.0, v == 0.0);
    }
  }
}
`;
}

/** WGSL of pass 2, the razor (see the module doc). */
export function sdrRazorWGSL(): string {
  const W = SDR_RAZOR_WG;
  return `
struct P { n: u32, group: u32, cols: u32, gs: u32, mode: u32, rbit: u32, qbit: u32, ngroups: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> su: array<f32>;

fn unitOf(i: u32) -> u32 {
  if (p.mode == 0u) { return 0u; }
  if (p.mode == 2u) { return i % p.cols; }
  return i / p.gs;
}

@compute @workgroup_size(${W}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = (wid.x + wid.y * nwg.x) * ${W}u + lid.x;
  if (g >= p.ngroups) { return; }
  let g0 = g * p.group;
  let g1 = min(g0 + p.group, p.n);
  var m = 0.0;
  for (var i = g0; i < g1; i = i + 1u) { m = max(m, abs(y[i])); }
  let rb = i32(p.rbit);
  var razor = false;
  var sh = 0;
  var floorFrom = 3.0e38;
  if (m >= ldexp(1.0, rb - 1)) {
    let b = i32(firstLeadingBit(u32(m))) + 1;
    if (b <= i32(p.qbit)) {
      razor = true;
      sh = b + 1 - rb;
      let edge = ldexp(1.0, b) - ldexp(1.0, b - 4);
      if (m >= edge) { floorFrom = floor(edge); }
    }
  }
  let unit = ldexp(1.0, sh);
  let inv = ldexp(1.0, -sh);
  for (var i = g0; i < g1; i = i + 1u) {
    let c = y[i];
    var a = abs(c);
    if (razor) {
      if (a >= floorFrom) { a = floor(a * inv) * unit; } else { a = round(a * inv) * unit; }
    }
    let v = su[unitOf(i)] * (sign(c) * a);
    y[i] = select(v, 0.0, v == 0.0);
  }
}
`;
}

/** The uniform fields of {@linkcode sdrGridWGSL} for `spec` over [rows, cols]. */
export function sdrGridFields(
  spec: FakeQuantSpec,
  rows: number,
  cols: number,
): (number | { f: number })[] {
  const { units, count, gs, mode } = fakeQuantUnits(spec, rows, cols);
  const ds = spec.grid === "deepspeed";
  const sym = ds || (spec.sym ?? true);
  const maxq = maxqOf({ ...spec, sym });
  return [
    units,
    count,
    cols,
    gs,
    mode,
    { f: maxq },
    sym ? 1 : 0,
    { f: spec.clip ?? 1 },
    spec.qrazor ? 1 : 0,
    rows,
    { f: ds ? 2 ** (spec.bits - 1) : maxq },
    { f: ds ? -(2 ** (spec.bits - 1)) : -maxq },
  ];
}

/** The uniform fields of {@linkcode sdrRazorWGSL} and the number of SDR groups. */
export function sdrRazorFields(
  spec: FakeQuantSpec,
  rows: number,
  cols: number,
): { fields: number[]; groups: number } {
  const { gs, mode } = fakeQuantUnits(spec, rows, cols);
  const n = rows * cols, group = spec.qrazor!.group;
  const groups = Math.ceil(n / group);
  return { fields: [n, group, cols, gs, mode, spec.qrazor!.bits, spec.bits, groups], groups };
}
