/**
 * A WebAssembly SIMD kernel for GPTQ's in-block update of four rows: `W1[r, j] −= e_r ·
 * Hinv[i, j]` for j in a range, two columns per step in float64 lanes (`f64x2`): each float32
 * weight and `Hinv` entry promoted to float64, the exact product subtracted in float64, the
 * difference rounded to float32 — the very operations of the TypeScript statement
 * `W1[k] -= e * h` on Float32Arrays, so the result is bit-identical to the plain loop
 * (`tests/quant/gptq_wasm_test.ts`) and about twice as fast. The module (about 300 bytes) is
 * assembled here, byte by byte, from the instruction list below; no binary ships.
 * @module
 */

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** A section: id, byte length, contents. */
function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

/** A name: length and UTF-8 bytes. */
function name(s: string): number[] {
  const b = [...new TextEncoder().encode(s)];
  return [...uleb(b.length), ...b];
}

// Opcodes (WebAssembly core 2.0, SIMD prefix 0xfd with LEB128 sub-opcodes).
const LOCAL_GET = 0x20, LOCAL_SET = 0x21, I32_CONST = 0x41, I32_AND = 0x71, I32_SHL = 0x74;
const I32_ADD = 0x6a, I32_GE_U = 0x4f, BR = 0x0c, BR_IF = 0x0d, END = 0x0b;
const F32_LOAD = 0x2a, F32_STORE = 0x38, F64_PROMOTE = 0xbb, F32_DEMOTE = 0xb6;
const F64_MUL = 0xa2, F64_SUB = 0xa1, VOID = 0x40;
const LOAD64_ZERO = [0xfd, 0x5d], STORE64_LANE = [0xfd, 0x5b], PROMOTE_LOW = [0xfd, 0x5f];
const DEMOTE_ZERO = [0xfd, 0x5e], F64X2_SPLAT = [0xfd, 0x14];
const F64X2_MUL = [0xfd, 0xf2, 0x01], F64X2_SUB = [0xfd, 0xf1, 0x01];
/** memarg: alignment hint 2^2 (float32 data), offset 0. */
const MEM = [0x02, 0x00];

// Locals: params w0..w3 (0..3, byte offsets of the four rows), h (4), n (5, columns), e0..e3
// (6..9, f64); then off (10), end (11), hv (12, v128), s0..s3 (13..16, v128 splats).
const OFF = 10, ENDB = 11, HV = 12, S0 = 13;

function body(): number[] {
  const code: number[] = [];
  const get = (i: number) => code.push(LOCAL_GET, i);
  const set = (i: number) => code.push(LOCAL_SET, i);
  for (let r = 0; r < 4; r++) {
    get(6 + r);
    code.push(...F64X2_SPLAT);
    set(S0 + r);
  }
  // end = (n & ~1) · 4 bytes
  get(5);
  code.push(I32_CONST, 0x7e, I32_AND, I32_CONST, 0x02, I32_SHL);
  set(ENDB);
  code.push(0x02, VOID, 0x03, VOID); // block, loop
  get(OFF);
  get(ENDB);
  code.push(I32_GE_U, BR_IF, 1);
  get(4);
  get(OFF);
  code.push(I32_ADD, ...LOAD64_ZERO, ...MEM, ...PROMOTE_LOW);
  set(HV);
  for (let r = 0; r < 4; r++) {
    get(r);
    get(OFF);
    code.push(I32_ADD); // store address
    get(r);
    get(OFF);
    code.push(I32_ADD, ...LOAD64_ZERO, ...MEM, ...PROMOTE_LOW);
    get(S0 + r);
    get(HV);
    code.push(...F64X2_MUL, ...F64X2_SUB, ...DEMOTE_ZERO, ...STORE64_LANE, ...MEM, 0x00);
  }
  get(OFF);
  code.push(I32_CONST, 0x08, I32_ADD);
  set(OFF);
  code.push(BR, 0, END, END); // loop again; end loop, end block
  // An odd last column, scalar.
  get(5);
  code.push(I32_CONST, 0x01, I32_AND, 0x04, VOID); // if
  for (let r = 0; r < 4; r++) {
    get(r);
    get(ENDB);
    code.push(I32_ADD);
    get(r);
    get(ENDB);
    code.push(I32_ADD, F32_LOAD, ...MEM, F64_PROMOTE);
    get(6 + r);
    get(4);
    get(ENDB);
    code.push(I32_ADD, F32_LOAD, ...MEM, F64_PROMOTE, F64_MUL, F64_SUB, F32_DEMOTE);
    code.push(F32_STORE, ...MEM);
  }
  code.push(END, END); // end if, end function
  const locals = [0x02, 0x02, 0x7f, 0x05, 0x7b]; // 2 × i32, 5 × v128
  return [...uleb(locals.length + code.length), ...locals, ...code];
}

/** The module's bytes: imports memory "m"."mem", exports `upd4`. */
export function gptqWasmBytes(): Uint8Array<ArrayBuffer> {
  const type = [0x01, 0x60, 0x0a, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7c, 0x7c, 0x7c, 0x7c, 0x00];
  const imports = [0x01, ...name("m"), ...name("mem"), 0x02, 0x00, 0x01];
  const funcs = [0x01, 0x00];
  const exports = [0x01, ...name("upd4"), 0x00, 0x00];
  return Uint8Array.from([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, type),
    ...section(2, imports),
    ...section(3, funcs),
    ...section(7, exports),
    ...section(10, [0x01, ...body()]),
  ]);
}

/** The kernel: its memory (grown on demand) and the four-row update. */
export interface GptqWasm {
  /** `W1[r, j] −= e_r · h[j]` for four rows at byte offsets `w0..w3`, `n` columns. */
  upd4(
    w0: number,
    w1: number,
    w2: number,
    w3: number,
    h: number,
    n: number,
    e0: number,
    e1: number,
    e2: number,
    e3: number,
  ): void;
  /** The linear memory, at least `bytes` long (views of an older buffer are detached). */
  memory(bytes: number): ArrayBuffer;
}

let kernel: GptqWasm | null | undefined;

/** The kernel, or null where WebAssembly SIMD is unavailable (callers keep the TypeScript loop). */
export function gptqWasm(): GptqWasm | null {
  if (kernel !== undefined) return kernel;
  try {
    const bytes = gptqWasmBytes();
    if (typeof WebAssembly === "undefined" || !WebAssembly.validate(bytes)) return kernel = null;
    const mem = new WebAssembly.Memory({ initial: 1 });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { m: { mem } });
    const upd4 = inst.exports.upd4 as GptqWasm["upd4"];
    kernel = {
      upd4,
      memory(bytes: number) {
        const have = mem.buffer.byteLength;
        if (bytes > have) mem.grow(Math.ceil((bytes - have) / 65536));
        return mem.buffer as ArrayBuffer;
      },
    };
  } catch {
    kernel = null;
  }
  return kernel ?? null;
}
