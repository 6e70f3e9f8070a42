/**
 * The compute device, chosen once (`useDevice`). Default: CPU. WebGPU is chosen by
 * `useDevice("webgpu")`, or by `useDevice("auto")` when a real, non-fallback adapter exists.
 * Everything that computes (forward, perplexity, generation, the quantization pipeline) asks
 * {@linkcode getBackend}, so one call switches the whole API.
 * @module
 */
import type { Backend } from "./backend.ts";
import { cpuBackend } from "./cpu.ts";
import { OptionError, UnsupportedError } from "../errors.ts";
import { type AdapterReport, getWebGPU, hasWebGPU } from "./_webgpu_device.ts";
import { webgpuBackend, type WebGPUBackendOptions } from "./webgpu.ts";

let active: Backend = cpuBackend;

/** The active backend. */
export function getBackend(): Backend {
  return active;
}

/** Sets the active backend directly (used by `useDevice` and tests). */
export function setBackend(b: Backend): void {
  active = b;
}

/** What {@linkcode useDevice} accepts. */
export type DeviceKind = "webgpu" | "cpu" | "auto";

/** Options of {@linkcode useDevice}. */
export interface UseDeviceOptions extends WebGPUBackendOptions {
  /**
   * Accept a software adapter (lavapipe, llvmpipe, SwiftShader, WARP): for tests and CI, far
   * slower than the CPU backend. Default false.
   */
  allowFallback?: boolean;
}

/** The device {@linkcode useDevice} chose. */
export interface DeviceChoice {
  /** "cpu" or "webgpu". */
  name: "cpu" | "webgpu";
  /** The chosen backend's description (adapter name for WebGPU). */
  description: string;
  /** The WebGPU adapter report, when WebGPU was chosen. */
  adapter?: AdapterReport;
  /** Why "auto" chose the CPU (no WebGPU, only a software adapter, ...). */
  reason?: string;
  /** The backend now active. */
  backend: Backend;
}

/**
 * Chooses the compute device for every later computation and returns what was chosen.
 * - "cpu": onnxruntime-node products, TypeScript elementwise work.
 * - "webgpu": the WGSL kernels. Throws {@linkcode UnsupportedError} when there is no adapter
 *   (say, Deno ran without `--unstable-webgpu`), or when the only adapter is a software one and
 *   `allowFallback` is not set (the message says to pass `{ allowFallback: true }`).
 * - "auto": WebGPU when a real, non-fallback adapter exists (or a software one with
 *   `allowFallback`), else the CPU; `reason` says why the CPU was chosen.
 *
 * @example
 * ```ts
 * const d = await useDevice("auto");
 * console.log(d.description); // "WebGPU NVIDIA H100 80GB HBM3" or "cpu (onnxruntime-node ...)"
 * ```
 */
export async function useDevice(
  kind: DeviceKind,
  opts: UseDeviceOptions = {},
): Promise<DeviceChoice> {
  if (kind === "cpu") {
    setBackend(cpuBackend);
    return { name: "cpu", description: cpuBackend.description, backend: cpuBackend };
  }
  if (kind !== "webgpu" && kind !== "auto") {
    throw new OptionError("device", `must be "webgpu", "cpu" or "auto", got ${String(kind)}`);
  }
  let reason: string | undefined;
  if (!hasWebGPU()) {
    reason = "navigator.gpu is missing (run Deno with --unstable-webgpu)";
  } else {
    try {
      const ctx = await getWebGPU({ allowFallback: true });
      if (ctx.fallback && !opts.allowFallback) {
        reason = `the only adapter is a software one ("${ctx.info.description}")`;
        if (kind === "webgpu") {
          throw new UnsupportedError(
            `useDevice("webgpu"): ${reason}; pass { allowFallback: true } to use it ` +
              `(slow: for tests and CI), or useDevice("cpu")`,
          );
        }
      } else {
        const be = await webgpuBackend({ ...opts, allowFallback: true });
        setBackend(be);
        return { name: "webgpu", description: be.description, adapter: be.adapter, backend: be };
      }
    } catch (e) {
      if (kind === "webgpu") {
        if (e instanceof UnsupportedError && e.message.startsWith("useDevice")) throw e;
        throw new UnsupportedError(
          `useDevice("webgpu"): no usable WebGPU adapter (${(e as Error).message})`,
          { cause: e },
        );
      }
      reason ??= (e as Error).message;
    }
  }
  if (kind === "webgpu") {
    throw new UnsupportedError(`useDevice("webgpu"): ${reason}`);
  }
  setBackend(cpuBackend);
  return { name: "cpu", description: cpuBackend.description, reason, backend: cpuBackend };
}
