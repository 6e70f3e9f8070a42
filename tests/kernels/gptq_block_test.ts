import { assert, assertEquals, assertLess } from "@std/assert";
import { getWebGPU, gpuGptq, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { gptqParamsDispatch, gpuGptqColumns } from "../../src/backend/_webgpu_gptq.ts";
import {
  bindGroup,
  grid,
  pipeline,
  readF32,
  runDispatches,
  scratch,
  uniforms,
  upload,
} from "../../src/backend/_webgpu_device.ts";
import { randomArray, rng } from "../../src/backend/_webgpu_check.ts";
import { gptqRef, roundHalfEven } from "../../kernels/gptq_block.ts";
import {
  DIV_RN_WGSL,
  gatherRef,
  gatherWGSL,
  gptqParamsRef,
  groupsStartingIn,
  setDiagonalWGSL,
} from "../../kernels/gptq_params.ts";
import { findParams } from "../../src/quant/core/grid.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("gptq_block_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

/** Random W, an upper-triangular Hinv with a positive diagonal, min-max grids per group. */
function problem(rows: number, cols: number, bits: number, seed: number, gs = cols) {
  const w = randomArray(rows * cols, { seed });
  const r = rng(seed + 1);
  const hinv = new Float32Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    hinv[i * cols + i] = 0.5 + r();
    for (let j = i + 1; j < cols; j++) hinv[i * cols + j] = (r() - 0.5) * 0.1;
  }
  const maxq = 2 ** bits - 1;
  const groups = Math.ceil(cols / gs);
  const scale = new Float32Array(rows * groups), zero = new Float32Array(rows * groups);
  for (let i = 0; i < rows; i++) {
    for (let g = 0; g < groups; g++) {
      let mn = 0, mx = 0;
      for (let j = g * gs; j < Math.min(cols, (g + 1) * gs); j++) {
        mn = Math.min(mn, w[i * cols + j]);
        mx = Math.max(mx, w[i * cols + j]);
      }
      scale[i * groups + g] = Math.fround((mx - mn) / maxq);
      zero[i * groups + g] = Math.round(-mn / scale[i * groups + g]);
    }
  }
  return { w, hinv, scale, zero, maxq, groups };
}

/** Counts differing codes; asserts that each differs by one step. */
function countFlips(got: ArrayLike<number>, want: ArrayLike<number>, what: string): number {
  let flips = 0;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      flips++;
      assertLess(Math.abs(got[i] - want[i]), 2, `${what}: a flip moves one code step`);
    }
  }
  return flips;
}

Deno.test("roundHalfEven rounds ties to even", () => {
  for (const [x, y] of [[0.5, 0], [1.5, 2], [2.5, 2], [-0.5, -0], [-1.5, -2], [1.4, 1]]) {
    assert(roundHalfEven(x) === y || (y === 0 && roundHalfEven(x) === 0), `${x}`);
  }
});

Deno.test("groupsStartingIn lists the groups whose first column lies in a block", () => {
  assertEquals(groupsStartingIn(0, 128, 32), { g0: 0, ng: 4 });
  assertEquals(groupsStartingIn(128, 256, 256), { g0: 1, ng: 0 });
  assertEquals(groupsStartingIn(256, 384, 256), { g0: 1, ng: 1 });
  assertEquals(groupsStartingIn(7, 14, 5), { g0: 2, ng: 1 });
  assertEquals(groupsStartingIn(100, 172, 16), { g0: 7, ng: 4 });
});

Deno.test({
  name: "fused GPTQ block kernel + matmul trailing update match the plain loop",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const cases = [[37, 200, 4, 64, 200], [64, 256, 3, 128, 256], [20, 130, 2, 32, 130], [
      48,
      256,
      4,
      64,
      64, // group-wise grid, groups = blocks (static groups)
    ]];
    for (const [rows, cols, bits, bs, gs] of cases) {
      const p = problem(rows, cols, bits, rows + cols, gs);
      const o = { rows, cols, scale: p.scale, zero: p.zero, maxq: p.maxq, blockSize: bs };
      const got = await gpuGptq(ctx, p.w, p.hinv, o);
      const ref = gptqRef(p.w.slice(), p.hinv, o);
      const flips = countFlips(got.codes, ref.codes, `[${rows}x${cols}]`);
      console.log(`  GPTQ [${rows}x${cols}] ${bits}-bit block ${bs} g${gs}: ${flips} code flips`);
      // float summation order may flip a rounding tie; allow 0.1% of codes
      assertLess(flips, Math.max(1, rows * cols * 1e-3));
    }
  },
});

Deno.test({
  name: "fused GPTQ kernel with a per-column group index on odd shapes matches gptqRef",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    // [rows, cols, bits, block, groupSize, permuted groups (static groups + act-order)]
    const cases: [number, number, number, number, number, boolean][] = [
      [37, 200, 4, 64, 32, false], // rows % 16 ≠ 0, cols % block ≠ 0, groups < block
      [1, 130, 3, 32, 50, true], // one row, partial last group, permuted groups
      [19, 96, 2, 7, 16, false], // block 7 (< 16 rows of a workgroup), groups straddle blocks
      [33, 160, 8, 128, 80, true], // 8-bit, last block of 32
      [16, 64, 4, 256, -1, false], // block wider than the matrix, one grid per row
    ];
    for (const [rows, cols, bits, bs, gs, permuted] of cases) {
      const p = problem(rows, cols, bits, 7 * rows + cols, gs > 0 ? gs : cols);
      const r = rng(rows * cols);
      const perm = Array.from({ length: cols }, (_, i) => i);
      if (permuted) {
        for (let i = cols - 1; i > 0; i--) {
          const k = Math.floor(r() * (i + 1));
          [perm[i], perm[k]] = [perm[k], perm[i]];
        }
      }
      const colGroup = Uint32Array.from(perm, (c) => (gs > 0 ? Math.floor(c / gs) : 0));
      const o = {
        rows,
        cols,
        scale: p.scale,
        zero: p.zero,
        maxq: p.maxq,
        blockSize: bs,
        colGroup,
      };
      const got = await gpuGptq(ctx, p.w, p.hinv, o);
      const ref = gptqRef(p.w.slice(), p.hinv, o);
      const what = `[${rows}x${cols}] ${bits}-bit block ${bs} g${gs}${permuted ? " permuted" : ""}`;
      const flips = countFlips(got.codes, ref.codes, what);
      let qOff = 0;
      for (let i = 0; i < rows * cols; i++) if (got.q[i] !== ref.q[i]) qOff++;
      const lossRel = Math.abs(got.loss - ref.loss) / ref.loss;
      console.log(
        `  ${what}: ${flips} code flips, ${qOff} Q differ, loss rel ${lossRel.toExponential(1)}`,
      );
      assertLess(flips, Math.max(1, rows * cols * 1e-3));
      assert(qOff <= flips, `${what}: Q differs where codes agree`);
      assertLess(lossRel, 1e-4, what);
    }
  },
});

Deno.test({
  name: "GPU column pass with dynamic groups (gpuGptqColumns) matches gptqRef with fitted grids",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    // [rows, cols, bits, block, groupSize, sym]
    const cases: [number, number, number, number, number, boolean][] = [
      [37, 256, 4, 128, 32, false], // groups < block
      [21, 200, 3, 64, 128, true], // groups > block, partial last group, sym
      [1, 96, 2, 32, 32, false], // one row, groups = blocks
      [50, 130, 8, 48, 20, false], // groups straddle blocks, partial last block
    ];
    for (const [rows, cols, bits, bs, gs, sym] of cases) {
      const p = problem(rows, cols, bits, 3 * rows + cols);
      const ngroups = Math.ceil(cols / gs);
      const colGroup = Int32Array.from({ length: cols }, (_, c) => Math.floor(c / gs));
      const live0 = ctx.pool.stats().liveBytes;
      const got = (await gpuGptqColumns(ctx, {
        rows,
        cols,
        W: p.w,
        Hinv: p.hinv,
        blocksize: bs,
        bits,
        sym,
        groupSize: gs,
        ngroups,
        colGroup,
        scales: new Float32Array(rows * ngroups),
        zeros: new Float32Array(rows * ngroups),
        fitGroups: true,
      }))!;
      assertEquals(ctx.pool.stats().liveBytes, live0, "pooled buffers returned");
      const ref = gptqRef(p.w.slice(), p.hinv, {
        rows,
        cols,
        maxq: p.maxq,
        blockSize: bs,
        fit: { groupSize: gs, sym },
      });
      const what = `[${rows}x${cols}] ${bits}-bit block ${bs} g${gs}${sym ? " sym" : ""}`;
      const flips = countFlips(got.codes, ref.codes, what);
      let gridOff = 0, firstBlock = 0;
      for (let r = 0; r < rows; r++) {
        for (let g = 0; g < ngroups; g++) {
          const i = r * ngroups + g;
          if (got.scales[i] !== ref.scale[i] || got.zeros[i] !== ref.zero[i]) {
            gridOff++;
            if (g * gs < bs) firstBlock++;
            // later groups read W after trailing updates summed in another order (ulps)
            if (flips === 0) {
              assertLess(Math.abs(got.scales[i] - ref.scale[i]), 1e-5 * ref.scale[i], what);
              assertEquals(got.zeros[i], ref.zero[i], what);
            }
          }
        }
      }
      const lossRel = Math.abs(got.loss - ref.loss) / ref.loss;
      console.log(
        `  ${what}: ${flips} code flips, ${gridOff} grids differ, loss rel ${
          lossRel.toExponential(1)
        }`,
      );
      assertEquals(firstBlock, 0, `${what}: grids fitted in the first block are bit-exact`);
      assertLess(flips, Math.max(1, rows * cols * 1e-3));
      assertLess(lossRel, 1e-4, what);
    }
  },
});

/** One row per case: random values, all zeros, all positive, all negative, one outlier, ties. */
function paramsInput(rows: number, cols: number, seed: number): Float32Array {
  const w = randomArray(rows * cols, { seed, lo: -2, hi: 2 });
  const r = rng(seed + 3);
  for (let row = 0; row < rows; row++) {
    const kind = row % 7, base = row * cols;
    for (let c = 0; c < cols; c++) {
      const v = w[base + c];
      if (kind === 1) w[base + c] = 0;
      else if (kind === 2) w[base + c] = Math.abs(v);
      else if (kind === 3) w[base + c] = -Math.abs(v) * 1e-3;
      else if (kind === 4) w[base + c] = c === 5 ? 37.5 : v * 1e-2;
      else if (kind === 5) w[base + c] = Math.round(v * 8) / 8; // exact binary fractions
      else if (kind === 6) w[base + c] = Math.fround(v * Math.exp(8 * (r() - 0.5)));
    }
  }
  return w;
}

Deno.test({
  name: "GPTQ grid-fit kernel equals findParams bit for bit (asym/sym, 2–8 bits, partial groups)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    let checked = 0;
    for (const [rows, cols, gs, seed] of [[45, 256, 32, 1], [21, 100, 24, 2], [70, 96, 96, 3]]) {
      const w = paramsInput(rows, cols, seed);
      const ngroups = Math.ceil(cols / gs);
      for (const bits of [2, 3, 4, 8]) {
        for (const sym of [false, true]) {
          const wb = upload(ctx, w), gb = scratch(ctx, rows * ngroups * 8);
          // fit in two dispatches (two "blocks") to exercise g0 > 0
          const half = Math.ceil(ngroups / 2);
          const common = { rows, cols, groupSize: gs, ngroups, maxq: 2 ** bits - 1, sym };
          await runDispatches(ctx, [
            gptqParamsDispatch(ctx, { w: wb, grid: gb }, { ...common, g0: 0, ng: half }),
            gptqParamsDispatch(ctx, { w: wb, grid: gb }, {
              ...common,
              g0: half,
              ng: ngroups - half,
            }),
          ]);
          const got = await readF32(ctx, gb, rows * ngroups * 2);
          ctx.pool.release(wb, gb);
          const mine = new Float32Array(rows * ngroups * 2);
          gptqParamsRef(w, { ...common, g0: 0, ng: ngroups }, mine);
          for (let g = 0; g < ngroups; g++) {
            const ref = findParams({ shape: [rows, cols], data: w }, {
              bits,
              sym,
              colStart: g * gs,
              colEnd: Math.min(g * gs + gs, cols),
            });
            for (let r = 0; r < rows; r++) {
              const s = got[2 * (r * ngroups + g)], z = got[2 * (r * ngroups + g) + 1];
              const at = `[${rows}x${cols}] g${gs} ${bits}-bit ${
                sym ? "sym" : "asym"
              } row ${r} group ${g}`;
              assert(s === ref.scale[r], `${at}: scale ${s} vs ${ref.scale[r]}`);
              assert(z === ref.zero[r], `${at}: zero ${z} vs ${ref.zero[r]}`);
              const k = 2 * (r * ngroups + g);
              assert(mine[k] === s && mine[k + 1] === z, `${at}: gptqParamsRef`);
              checked++;
            }
          }
        }
      }
    }
    console.log(`  ${checked} (row, group) grids bit-exact`);
  },
});

Deno.test({
  name: "divRN (the grid fit's division) is correctly rounded float32 division",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const n = 1 << 16;
    const r = rng(11);
    const a = new Float32Array(n), b = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const k = i % 4;
      b[i] = k === 0 ? 1 + Math.floor(r() * 255) : Math.fround(Math.exp(20 * (r() - 0.5)));
      if (k === 2) {
        // a within a few ulps of b · (an integer + 1/2): quotients next to rounding ties
        const t = Math.floor(r() * 16) + 0.5;
        const v = new Float32Array([b[i] * t]);
        new Int32Array(v.buffer)[0] += Math.floor(r() * 7) - 3;
        a[i] = v[0];
      } else a[i] = Math.fround(Math.exp(30 * (r() - 0.5)) * (r() < 0.1 ? -1 : 1));
    }
    const code = `
@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
${DIV_RN_WGSL}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < arrayLength(&C)) { C[id.x] = divRN(A[id.x], B[id.x]); }
}`;
    const pipe = pipeline(ctx, code);
    const ab = upload(ctx, a), bb = upload(ctx, b), cb = scratch(ctx, n * 4);
    await runDispatches(ctx, [{
      pipeline: pipe,
      bindGroup: bindGroup(ctx, pipe, [ab, bb, cb]),
      workgroups: [n / 64, 1, 1],
    }]);
    const got = await readF32(ctx, cb, n);
    ctx.pool.release(ab, bb, cb);
    for (let i = 0; i < n; i++) {
      assert(got[i] === Math.fround(a[i] / b[i]), `${a[i]} / ${b[i]}: ${got[i]}`);
    }
  },
});

Deno.test({
  name: "act-order prep kernels: gather W/H by perm and set H's diagonal equal the CPU (exact)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const g = rng(5);
    for (const [rows, cols] of [[1, 1], [3, 7], [37, 300]]) {
      const perm = Uint32Array.from(
        Array.from({ length: cols }, (_, i) => i).sort(() => g() - 0.5),
      );
      const W = randomArray(rows * cols, { seed: rows + cols });
      const H = randomArray(cols * cols, { seed: cols });
      const diag = randomArray(cols, { seed: 3 * cols });
      const run = async (src: Float32Array, r: number, rowsToo: boolean, withDiag: boolean) => {
        const pipe = pipeline(ctx, gatherWGSL());
        const sb = upload(ctx, src), ib = upload(ctx, perm), db = scratch(ctx, r * cols * 4);
        const list = [{
          pipeline: pipe,
          bindGroup: bindGroup(ctx, pipe, [
            uniforms(ctx, [r, cols, rowsToo ? 0 : 1, 0]),
            sb,
            ib,
            ib,
            db,
          ]),
          workgroups: grid(ctx, Math.ceil((r * cols) / 256)),
        }];
        const gb = upload(ctx, diag);
        if (withDiag) {
          const dp = pipeline(ctx, setDiagonalWGSL());
          list.push({
            pipeline: dp,
            bindGroup: bindGroup(ctx, dp, [uniforms(ctx, [cols, 0, 0, 0]), db, gb]),
            workgroups: [Math.ceil(cols / 256), 1, 1],
          });
        }
        await runDispatches(ctx, list);
        const out = await readF32(ctx, db, r * cols);
        ctx.pool.release(sb, ib, db, gb);
        return out;
      };
      assertEquals(await run(W, rows, false, false), gatherRef(W, { rows, cols, colIdx: perm }));
      const want = gatherRef(H, { rows: cols, cols, rowIdx: perm, colIdx: perm });
      for (let i = 0; i < cols; i++) want[i * cols + i] = diag[i];
      assertEquals(await run(H, cols, true, true), want);
    }
  },
});
