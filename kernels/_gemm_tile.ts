/**
 * Shared body of the 128×128 register-blocked GEMM tile (used by `matmul.ts`, `xtx.ts` through
 * it, and `dequant_gemm.ts`): 16×16 threads, 8×8 outputs per thread in 16 named `vec4`
 * accumulators, K-major staging in workgroup memory, a fully unrolled inner loop.
 * @module
 */

/** Parameters of {@linkcode gemmTileBody}. */
export interface GemmTileOptions {
  /** Element type staged in workgroup memory. */
  T: "f32" | "f16";
  /** Accumulator type. */
  AT: "f32" | "f16";
  /** K-slice depth (multiple of 4). */
  BK: number;
  /** WGSL expression of the loop bound on k (e.g. "p.K"). */
  kEnd: string;
  /**
   * WGSL statements staging one K-slice: must fill `As[k][m]` (vec4 index `(k*128+m)>>2`) and
   * `Bs[k][n]` for k < BK, m, n < 128, using `tid`, `row0`, `col0`, `k0`.
   */
  stage: string;
  /** Name of the store function `fn(r: u32, c: u32, v: AT)`. */
  store: string;
  /** Also store the mirrored element (symmetric products) when `wid.x != wid.y`. */
  mirror?: boolean;
}

/** Workgroup declarations (As, Bs) for the tile. */
export function gemmTileShared(T: string, BK: number): string {
  return `var<workgroup> As: array<vec4<${T}>, ${BK * 32}>;
var<workgroup> Bs: array<vec4<${T}>, ${BK * 32}>;`;
}

/** The statements inside `main` after `tid`, `tx`, `ty`, `row0`, `col0` are defined. */
export function gemmTileBody(o: GemmTileOptions): string {
  const { T, AT, BK } = o;
  const L: string[] = [];
  for (let i = 0; i < 8; i++) {
    for (let j = 0; j < 2; j++) L.push(`  var c${i}_${j} = vec4<${AT}>(0);`);
  }
  L.push(`  for (var k0 = 0u; k0 < ${o.kEnd}; k0 = k0 + ${BK}u) {`);
  L.push(o.stage);
  L.push("    workgroupBarrier();");
  const cv = (e: string) => (AT === T ? e : `vec4<${AT}>(${e})`);
  const comps = ["x", "y", "z", "w"];
  for (let k = 0; k < BK; k++) {
    L.push(`    {
      let a0 = ${cv(`As[${k * 32}u + ty]`)}; let a1 = ${cv(`As[${k * 32 + 16}u + ty]`)};
      let b0 = ${cv(`Bs[${k * 32}u + tx]`)}; let b1 = ${cv(`Bs[${k * 32 + 16}u + tx]`)};`);
    for (let i = 0; i < 8; i++) {
      const a = `a${i >> 2}.${comps[i & 3]}`;
      L.push(`      c${i}_0 = fma(vec4<${AT}>(${a}), b0, c${i}_0);`);
      L.push(`      c${i}_1 = fma(vec4<${AT}>(${a}), b1, c${i}_1);`);
    }
    L.push("    }");
  }
  L.push("    workgroupBarrier();");
  L.push("  }");
  for (let i = 0; i < 8; i++) {
    const r = i < 4 ? `row0 + ty * 4u + ${i}u` : `row0 + 64u + ty * 4u + ${i - 4}u`;
    for (let j = 0; j < 2; j++) {
      const c = j === 0 ? "col0 + tx * 4u" : "col0 + 64u + tx * 4u";
      for (let q = 0; q < 4; q++) {
        const v = `c${i}_${j}.${comps[q]}`;
        L.push(`  ${o.store}(${r}, ${c} + ${q}u, ${v});`);
        if (o.mirror) L.push(`  if (wid.x != wid.y) { ${o.store}(${c} + ${q}u, ${r}, ${v}); }`);
      }
    }
  }
  return L.join("\n");
}
