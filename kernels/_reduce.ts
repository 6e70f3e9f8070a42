/**
 * WGSL helpers for workgroup-wide reductions over 256 threads (no subgroups: the H100's Vulkan
 * adapter exposes none to Deno's WebGPU).
 * @module
 */

/** Declares `red` and `wg_sum` / `wg_max` over a 256-thread workgroup (call from uniform flow). */
export function reduceWGSL(): string {
  const tree = (op: string) => {
    const L: string[] = [];
    for (let s = 128; s > 0; s >>= 1) {
      L.push(`  if (tid < ${s}u) { red[tid] = ${op}(red[tid], red[tid + ${s}u]); }`);
      L.push("  workgroupBarrier();");
    }
    return L.join("\n");
  };
  return `
var<workgroup> red: array<f32, 256>;
fn add(a: f32, b: f32) -> f32 { return a + b; }
fn wg_sum(v: f32, tid: u32) -> f32 {
  red[tid] = v;
  workgroupBarrier();
${tree("add")}
  let r = red[0];
  workgroupBarrier();
  return r;
}
fn wg_max(v: f32, tid: u32) -> f32 {
  red[tid] = v;
  workgroupBarrier();
${tree("max")}
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
}

/**
 * Declares `row_max_sumexp(base, d, tid) -> vec2<f32>` over `d` values of the storage array
 * `arr` from `base`: the row max m and `Σ exp(x − m)`, both workgroup-reduced (needs
 * {@linkcode reduceWGSL}; call from uniform flow). The shared first half of softmax and NLL.
 */
export function rowMaxSumExpWGSL(arr: string): string {
  return `
fn row_max_sumexp(base: u32, d: u32, tid: u32) -> vec2<f32> {
  var m = -3.0e38;
  for (var i = tid; i < d; i = i + 256u) { m = max(m, ${arr}[base + i]); }
  let mx = wg_max(m, tid);
  var s = 0.0;
  for (var i = tid; i < d; i = i + 256u) { s = s + exp(${arr}[base + i] - mx); }
  return vec2<f32>(mx, wg_sum(s, tid));
}`;
}
