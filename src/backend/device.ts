/**
 * The compute device, chosen once (`useDevice`). Default: CPU. WebGPU is chosen by
 * `useDevice("webgpu")` (or "auto": WebGPU when a real, non-fallback adapter exists, else CPU).
 * @module
 */
import type { Backend } from "./backend.ts";
import { cpuBackend } from "./cpu.ts";

let active: Backend = cpuBackend;

/** The active backend. */
export function getBackend(): Backend {
  return active;
}

/** Sets the active backend directly (used by `useDevice` and tests). */
export function setBackend(b: Backend): void {
  active = b;
}
