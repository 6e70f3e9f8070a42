import { assertEquals } from "@std/assert";
import { transpose2d } from "../src/tensor.ts";
import { Rng } from "./_rng.ts";

Deno.test("transpose2d: element (i, j) lands at (j, i), every shape (bands of 8 rows and their tails)", () => {
  const rng = new Rng(5);
  for (const [r, c] of [[1, 1], [1, 9], [9, 1], [7, 3], [8, 8], [17, 5], [2048, 64], [33, 172]]) {
    const data = new Float32Array(r * c);
    for (let k = 0; k < data.length; k++) data[k] = rng.normal();
    const t = transpose2d({ shape: [r, c], data });
    assertEquals(t.shape, [c, r]);
    // Oracle: the definition, element by element.
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < c; j++) {
        if (t.data[j * r + i] !== data[i * c + j]) {
          throw new Error(`${r}×${c}: (${i}, ${j}): ${t.data[j * r + i]} vs ${data[i * c + j]}`);
        }
      }
    }
  }
});
