// Child process of ledger_test.ts: records `n` runs as fast as it can into one ledger file.
import { Ledger } from "../../src/ledger/ledger.ts";
const [path, w, n] = Deno.args;
const ledger = await Ledger.open(path);
for (let i = 0; i < Number(n); i++) {
  const id = ledger.begin({
    key: `w${w}-${i}`,
    kind: "test",
    identity: { model: { hash: "m" }, config: { i }, code: "c" },
    cacheable: true,
    label: `w${w}`,
  });
  ledger.finish(id, { metrics: { i } });
}
ledger.close();
