/**
 * Aggregations and standard errors as lm-evaluation-harness computes them
 * (`lm_eval/api/metrics.py`): `mean` with `mean_stderr` = sample standard deviation (n − 1)
 * / √n; `perplexity` = exp(−mean loglikelihood) with a bootstrap standard error
 * (`bootstrap_stderr`: chunks of 1,000 resamples, chunk i drawn by `random.Random(i).choices`,
 * 100,000 resamples by default, the sample standard deviation of the resampled statistics).
 * @module
 */
import { PyRandom } from "./_pyrandom.ts";

/** Arithmetic mean (0 for an empty list). */
export function mean(xs: readonly number[]): number {
  let s = 0;
  for (const x of xs) s += x;
  return xs.length ? s / xs.length : 0;
}

/** Sample standard deviation with n − 1 (lm-eval's `sample_stddev`). */
export function sampleStddev(xs: readonly number[]): number {
  const mu = mean(xs);
  let s = 0;
  for (const x of xs) s += (x - mu) ** 2;
  return Math.sqrt(s / (xs.length - 1));
}

/** lm-eval's `mean_stderr`: sampleStddev / √n (NaN for fewer than two items). */
export function meanStderr(xs: readonly number[]): number {
  return xs.length < 2 ? NaN : sampleStddev(xs) / Math.sqrt(xs.length);
}

/** lm-eval's `perplexity` aggregation: exp(−mean) of per-item loglikelihoods. */
export function perplexityAgg(lls: readonly number[]): number {
  return Math.exp(-mean(lls));
}

/**
 * lm-eval's `bootstrap_stderr(f, xs, iters)`: `iters // chunk` chunks (chunk = min(1000, iters)),
 * chunk i resampling with `random.Random(i).choices(xs, k=len(xs))`; the result is the sample
 * standard deviation of the `f` values.
 */
export function bootstrapStderr(
  f: (xs: readonly number[]) => number,
  xs: readonly number[],
  iters: number,
): number {
  const chunk = Math.min(1000, iters);
  const res: number[] = [];
  for (let i = 0; i < Math.floor(iters / chunk); i++) {
    const rnd = new PyRandom(i);
    for (let r = 0; r < chunk; r++) res.push(f(rnd.choices(xs, xs.length)));
  }
  return sampleStddev(res);
}
