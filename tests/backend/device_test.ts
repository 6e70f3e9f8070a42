/**
 * `useDevice`: "cpu", "webgpu" (software adapters only with `allowFallback`), "auto" (WebGPU only
 * on a real adapter), typed errors, and the no-adapter case in a child process.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { getBackend, useDevice } from "../../src/backend/device.ts";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { getWebGPU, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { OptionError, UnsupportedError } from "../../src/errors.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) {
  console.log("device_test: WebGPU cases SKIPPED — no adapter (run with --unstable-webgpu)");
}
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

Deno.test("useDevice('cpu') selects the CPU backend", async () => {
  const d = await useDevice("cpu");
  assertEquals(d.name, "cpu");
  assert(getBackend() === cpuBackend);
  assertStringIncludes(d.description, "cpu");
});

Deno.test("useDevice rejects an unknown kind with an OptionError", async () => {
  await assertRejects(() => useDevice("tpu" as "cpu"), OptionError, "device");
  assert(getBackend() === cpuBackend);
});

Deno.test({
  name: "useDevice: webgpu / auto on this adapter",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    try {
      if (ctx.fallback) {
        const e = await assertRejects(() => useDevice("webgpu"), UnsupportedError);
        assertStringIncludes(e.message, "allowFallback: true");
        assertStringIncludes(e.message, ctx.info.description);
        assert(getBackend() === cpuBackend, "a refused choice leaves the device as it was");
        const auto = await useDevice("auto");
        assertEquals(auto.name, "cpu");
        assertStringIncludes(auto.reason ?? "", "software");
        assert(getBackend() === cpuBackend);
      } else {
        const auto = await useDevice("auto");
        assertEquals(auto.name, "webgpu");
      }
      const d = await useDevice("webgpu", { allowFallback: true });
      assertEquals(d.name, "webgpu");
      assertEquals(getBackend().name, "webgpu");
      assertStringIncludes(d.description, ctx.info.description);
      assertEquals(d.adapter?.description, ctx.info.description);
      const a = await useDevice("auto", { allowFallback: true });
      assertEquals(a.name, "webgpu");
      const y = await getBackend().matmul({ shape: [1, 2], data: new Float32Array([1, 2]) }, {
        shape: [2, 1],
        data: new Float32Array([3, 4]),
      });
      assertEquals([...y.data], [11]);
    } finally {
      await useDevice("cpu");
    }
  },
});

Deno.test("without an adapter: auto falls back to the CPU, webgpu is a typed error", async () => {
  // DENO_WEBGPU_BACKEND=dx12 on Linux leaves Deno's WebGPU without any adapter.
  const url = new URL("../../src/backend/device.ts", import.meta.url).href;
  const errs = new URL("../../src/errors.ts", import.meta.url).href;
  const code = `
    import { useDevice } from "${url}";
    import { UnsupportedError } from "${errs}";
    const a = await useDevice("auto");
    let err = "";
    try { await useDevice("webgpu"); } catch (e) { err = (e instanceof UnsupportedError) + " " + e.message; }
    console.log(JSON.stringify({ name: a.name, reason: a.reason, err }));
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    env: { DENO_WEBGPU_BACKEND: Deno.build.os === "windows" ? "metal" : "dx12" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const r = JSON.parse(text.split("\n").pop()!);
  assertEquals(r.name, "cpu");
  assertStringIncludes(r.reason, "no adapter");
  assert(r.err.startsWith("true "), r.err);
  assertStringIncludes(r.err, "no adapter");
});
