/**
 * The CLI as a new user meets it: `src/cli.ts` run as a subprocess (exit codes, help and error
 * texts naming the flag typed), plus the flag table checked against the quantizers' strict
 * option specs (every option has a flag).
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { COMMANDS, parseFlags, QUANT_FLAGS, quantizerOptions } from "../src/cli.ts";
import { QUANTEASE_OPTION_SPECS } from "../src/quant/weight_only/quantease.ts";
import { QUIP_OPTION_SPECS } from "../src/quant/weight_only/quip.ts";
import { FRAMEQUANT_OPTION_SPECS } from "../src/quant/weight_only/framequant.ts";
import { RTN_OPTION_SPECS } from "../src/quant/weight_only/rtn.ts";
import { GPTQ_SPECS } from "../src/quant/core/options.ts";

const ROOT = new URL("../", import.meta.url);

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", "src/cli.ts", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { QUANTLAB_PROGRESS: "0" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("cli --help exits 0 and lists every command; no command exits 2", async () => {
  const r = await cli("--help");
  assertEquals(r.code, 0);
  for (const c of COMMANDS) assertStringIncludes(r.stdout, `  ${c.name} `);
  assertEquals((await cli()).code, 2);
});

Deno.test("cli quantize --help lists each quantizer flag with its default", async () => {
  const r = await cli("quantize", "--help");
  assertEquals(r.code, 0);
  for (const f of QUANT_FLAGS) assertStringIncludes(r.stdout, `--${f.name}`);
  assert(/--partial-groups\s+allow a group size/.test(r.stdout));
  assert(/--num-iter N\s+coordinate-descent sweeps \[default: 30\]/.test(r.stdout));
  assert(/--column-order gptq\|reference\s+.*\[default: gptq\]/.test(r.stdout));
  assert(/--windows N\s+.*\[default: 64\] \(also --nsamples\)/.test(r.stdout));
  assertEquals((await cli("ppl", "--help")).code, 0);
});

Deno.test("cli errors name the flag typed and the error class, exit 2, before any model work", async () => {
  const cases: [string[], string][] = [
    [
      ["quantize", "--grop-size", "32"],
      "error: OptionError: --grop-size: unknown flag for quantize (did you mean --group-size?)",
    ],
    [
      ["quantize", "--method", "gptq", "--bits", "9", "--eval", "none"],
      "error: OptionError: --bits: must be an integer in 2–8, got 9",
    ],
    [
      ["quantize", "--method", "gptq", "--group-size", "0"],
      "error: OptionError: --group-size: must be -1 or a positive integer",
    ],
    [
      ["quantize", "--method", "rtn", "--num-iter", "3"],
      "error: OptionError: --num-iter: does not apply to --method rtn",
    ],
    [
      ["quantize", "--method", "quip", "--column-order", "last"],
      'error: OptionError: --column-order: must be one of "gptq", "reference"',
    ],
    [["ppl", "--nsamples", "x"], 'error: OptionError: --nsamples: expected an integer, got "x"'],
    [["quantize", "--method", "nope"], 'error: OptionError: --method: unknown method "nope"'],
    [["frob"], 'error: OptionError: command: unknown command "frob"'],
  ];
  for (const [args, want] of cases) {
    const r = await cli(...args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, want);
    assert(!r.stderr.includes("    at "), `stack trace for ${args.join(" ")}`);
    assert(!r.stdout.includes("calibration"), "ran calibration before the static checks");
  }
});

Deno.test("cli static checks: a group size that does not divide a layer; an uncreatable --workdir", async () => {
  const g = await cli("quantize", "--method", "gptq", "--group-size", "5", "--eval", "none");
  assertEquals(g.code, 2);
  assertStringIncludes(g.stderr, "error: OptionError: --group-size: 5 does not divide the 64");
  assertStringIncludes(g.stderr, "--partial-groups");
  const file = await Deno.makeTempFile();
  try {
    const w = await cli(
      "quantize",
      "--method",
      "rtn",
      "--workdir",
      `${file}/sub`,
      "--eval",
      "none",
    );
    assertEquals(w.code, 2);
    assertStringIncludes(w.stderr, `error: OptionError: --workdir: cannot create "${file}/sub"`);
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("cli quantize prints FP and quantized perplexity on the same windows", async () => {
  const r = await cli(
    "quantize",
    "--method",
    "rtn",
    "--bits",
    "4",
    "--windows",
    "1",
    "--no-ledger",
  );
  assertEquals(r.code, 0, r.stderr);
  const fp = /FP\s+tinystories: ppl ([\d.]+) \(1 windows × (\d+)/.exec(r.stdout);
  const q = /rtn\s+tinystories: ppl ([\d.]+) \(1 windows × (\d+)/.exec(r.stdout);
  assert(fp && q, r.stdout);
  assertEquals(fp[2], q[2]);
  assert(Number(q[1]) > Number(fp[1]), "4-bit RTN should not beat FP on the same window");
  assertStringIncludes(r.stdout, "on the same 1 windows: FP");
  assert(!/XDG_RUNTIME_DIR/.test(r.stderr), r.stderr);
});

Deno.test("cli flag table: every option of the strict quantizer specs has a flag", () => {
  const specs: [string, Record<string, unknown>][] = [
    ["rtn", RTN_OPTION_SPECS],
    ["gptq", GPTQ_SPECS],
    ["quantease", QUANTEASE_OPTION_SPECS],
    ["quip", QUIP_OPTION_SPECS],
    ["framequant", FRAMEQUANT_OPTION_SPECS],
  ];
  for (const [method, spec] of specs) {
    for (const key of Object.keys(spec)) {
      const has = QUANT_FLAGS.some((f) =>
        f.methods!.includes(method) && f.option!.split(".")[0] === key
      );
      assert(has, `${method}.${key} has no CLI flag`);
    }
  }
  const p = parseFlags("quantize", [
    "--admm-rho=0.2",
    "--admm-niters",
    "7",
    "--column-order",
    "reference",
    "--no-incoh",
  ], QUANT_FLAGS);
  assertEquals(quantizerOptions("quip", p), {
    admm: { rho: 0.2, niters: 7 },
    columnOrder: "reference",
    incoh: false,
  });
  const f = parseFlags("quantize", ["--clip-sigma", "off", "--frames", "reference"], QUANT_FLAGS);
  assertEquals(quantizerOptions("framequant", f), { clipSigma: false, frames: "reference" });
});
