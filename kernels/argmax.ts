/**
 * Greedy token choice on the GPU: the argmax of one row of logits, the FIRST index among equal
 * maxima (as `sampleToken` at temperature 0 scans `logits[j] > logits[best]`), written to
 * `ids[0]` (the next decode step's input) and to `tokens[k]` (the list read back after a run of
 * steps). One workgroup of 256 threads: each thread scans a strided slice keeping its first
 * maximum, then a tree reduction keeps the larger value, or the smaller index on a tie.
 *
 * Binding layout: 0 = uniforms {d, k}, 1 = X f32 [d], 2 = ids u32 (read-write; [0] written),
 * 3 = tokens u32 (read-write; [k] written). Dispatch: (1, 1, 1).
 * @module
 */

/** WGSL of the row argmax kernel. */
export function argmaxWGSL(): string {
  const steps: string[] = [];
  for (let s = 128; s > 0; s >>= 1) {
    steps.push(`  if (tid < ${s}u) {
    let v = vs[tid + ${s}u];
    let j = js[tid + ${s}u];
    if (v > vs[tid] || (v == vs[tid] && j < js[tid])) { vs[tid] = v; js[tid] = j; }
  }
  workgroupBarrier();`);
  }
  return `
struct P { d: u32, k: u32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
var<workgroup> vs: array<f32, 256>;
var<workgroup> js: array<u32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  let tid = lid.x;
  var best = -3.4e38;
  var bj = 0xffffffffu;
  for (var j = tid; j < p.d; j = j + 256u) {
    let v = X[j];
    if (v > best || bj == 0xffffffffu) { best = v; bj = j; }
  }
  vs[tid] = best;
  js[tid] = bj;
  workgroupBarrier();
${steps.join("\n")}
  if (tid == 0u) {
    ids[0] = js[0];
    tokens[p.k] = js[0];
  }
}
`;
}

/** CPU reference of {@linkcode argmaxWGSL}: the first index of the maximum. */
export function argmaxRef(x: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < x.length; j++) if (x[j] > x[best]) best = j;
  return best;
}
