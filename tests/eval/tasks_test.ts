/**
 * Protocol fidelity of the task definitions: the prompts of the first three documents of each
 * task are written out here from lm-eval's task YAMLs (lm_eval/tasks/{piqa,arc,hellaswag,
 * winogrande,super_glue/boolq,openbookqa,lambada,mmlu,gsm8k}) applied by hand to the raw data
 * rows; GSM8K extraction on crafted strings; Python's random.Random against CPython outputs;
 * acc_norm on a hand-computed example; bad input.
 */
import { assert, assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { OfflineError, OptionError } from "../../src/errors.ts";
import { PyRandom } from "../../src/eval/_pyrandom.ts";
import { bootstrapStderr, meanStderr } from "../../src/eval/_stats.ts";
import {
  buildRequests,
  type BuiltDoc,
  evaluate,
  multipleChoiceMetrics,
  pooledStderr,
} from "../../src/eval/evaluate.ts";
import {
  getTask,
  gsm8kExtract,
  gsm8kNormalize,
  loadFewshotDocs,
  loadTaskDocs,
  MMLU_SUBJECTS,
  parseCsv,
} from "../../src/eval/tasks.ts";
import { loadModel } from "../../src/models/load.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const DS = `${DATA}datasets/`;

async function built(name: string, n = 3, numFewshot?: number): Promise<BuiltDoc[]> {
  const t = getTask(name);
  const { docs } = await loadTaskDocs(t);
  const few = (numFewshot ?? t.defaultShots) > 0 ? (await loadFewshotDocs(t)).docs : [];
  return buildRequests(t, docs.slice(0, n), few, { numFewshot });
}

/** Raw JSON lines of a data file (the oracle reads the files itself). */
async function rawLines(rel: string): Promise<Record<string, unknown>[]> {
  return (await Deno.readTextFile(DS + rel)).split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

function pairs(b: BuiltDoc): [string, string][] {
  return b.requests.map((r) => [r.context, r.continuation]);
}

Deno.test("piqa: 'Question: {goal}\\nAnswer:' with ' {sol}' continuations, first 3 items", async () => {
  const b = await built("piqa");
  assertEquals(pairs(b[0]), [
    [
      "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
      " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.",
    ],
    [
      "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
      " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.",
    ],
  ]);
  assertEquals(pairs(b[1]), [
    ["Question: dresser\nAnswer:", " replace drawer with bobby pin "],
    ["Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin "],
  ]);
  assertEquals(pairs(b[2]), [
    [
      "Question: To fight Ivan Drago in Rocky for sega master system.\nAnswer:",
      " Drago isn't in this game because it was released before Rocky IV.",
    ],
    [
      "Question: To fight Ivan Drago in Rocky for sega master system.\nAnswer:",
      " You have to defeat Apollo Creed and Clubber Lang first.",
    ],
  ]);
  assertEquals(b.map((x) => x.target), [0, 1, 1]);
});

Deno.test("arc_easy / arc_challenge: 'Question: {stem}\\nAnswer:', gold through the label list", async () => {
  const e = await built("arc_easy");
  assertEquals(
    e[0].requests[0].context,
    "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
  );
  assertEquals(e[0].requests.map((r) => r.continuation), [
    " Sunlight is the source of energy for nearly all ecosystems.",
    " Most ecosystems are found on land instead of in water.",
    " Carbon dioxide is more available than other gases.",
    " The producers in all ecosystems are plants.",
  ]);
  assertEquals(
    e[1].requests[0].context,
    "Question: Which piece of safety equipment is used to keep mold spores from entering the respiratory system?\nAnswer:",
  );
  assertEquals(e[1].requests.map((r) => r.continuation), [
    " safety goggles",
    " breathing mask",
    " rubber gloves",
    " lead apron",
  ]);
  assertEquals(
    e[2].requests[0].context,
    "Question: Meiosis is a type of cell division in which germ cells divide to produce haploid cells. Where does meiosis occur?\nAnswer:",
  );
  assertEquals(e.map((x) => x.target), [0, 1, 3]);
  const c = await built("arc_challenge");
  assertEquals(c.map((x) => x.requests[0].context), [
    "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
    "Question: A group of engineers wanted to know how different building designs would respond during an earthquake. They made several models of buildings and tested each for its ability to withstand earthquake conditions. Which will most likely result from testing different building designs?\nAnswer:",
    "Question: The end result in the process of photosynthesis is the production of sugar and oxygen. Which step signals the beginning of photosynthesis?\nAnswer:",
  ]);
  assertEquals(c[0].requests[2].continuation, " Planetary days will become shorter.");
  assertEquals(c.map((x) => x.target), [2, 1, 2]);
  // Items labelled 1–4 map answerKey through the label list (oracle: the raw rows).
  const raw = await rawLines("arc/ARC-Challenge-Test.jsonl");
  const all = buildRequests(
    getTask("arc_challenge"),
    (await loadTaskDocs(getTask("arc_challenge"))).docs,
    [],
  );
  let numeric = 0;
  raw.forEach((r, i) => {
    const q = r.question as { choices: { label: string }[] };
    const labels = q.choices.map((x) => x.label);
    if (labels[0] === "1") numeric++;
    assertEquals(all[i].target, labels.indexOf(r.answerKey as string));
    assertEquals(all[i].requests.length, labels.length);
  });
  assert(numeric > 0, "some ARC-Challenge items use numeric labels");
});

Deno.test("hellaswag: lm-eval preprocess on the llama.cpp layout (ctx_b capitalisation is the one documented deviation)", async () => {
  const b = await built("hellaswag");
  assertEquals(b[0].requests[0].context, "Roof shingle removal: A man is sitting on a roof. he");
  assertEquals(b[0].requests.map((r) => r.continuation), [
    " is using wrap to wrap a pair of skis.",
    " is ripping level tiles off.",
    " is holding a rubik's cube.",
    " starts pulling up roofing on a roof.",
  ]);
  assertEquals(
    b[1].requests[0].context,
    "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. the lady",
  );
  assertEquals(
    b[2].requests[0].context,
    "Canoeing: Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, with other individuals visible in the background. the child and a different man",
  );
  assertEquals(b.map((x) => x.target), [3, 3, 2]);
  // lm-eval renders item 0 from ctx_a "A man is sitting on a roof." and ctx_b "he" as
  // "...roof. He": the only difference is the capital of ctx_b.
  const lmEval0 = "Roof shingle removal: A man is sitting on a roof. He";
  assertEquals(b[0].requests[0].context.toLowerCase(), lmEval0.toLowerCase());
  // preprocess itself (lm-eval utils.py) on a WikiHow-style string.
  const { hellaswagPreprocess } = await import("../../src/eval/tasks.ts");
  assertEquals(
    hellaswagPreprocess(" Home: [header] How to x [title] Do y. [step] Then  z "),
    "Home: How to x. Do y. Then z",
  );
});

Deno.test("winogrande: partial scoring, contexts sentence[:i] + option, continuation ' ' + suffix", async () => {
  const b = await built("winogrande");
  assertEquals(pairs(b[0]), [
    ["Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."],
    ["Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."],
  ]);
  assertEquals(pairs(b[1]), [
    ["Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."],
    ["Sarah was a much better surgeon than Maria so Maria", " always got the harder cases."],
  ]);
  assertEquals(pairs(b[2]), [
    [
      "They were worried the wine would ruin the bed and the blanket, but the blanket",
      " was't ruined.",
    ],
    [
      "They were worried the wine would ruin the bed and the blanket, but the bed",
      " was't ruined.",
    ],
  ]);
  assertEquals(b.map((x) => x.target), [1, 0, 1]);
});

Deno.test("boolq: '{passage}\\nQuestion: {question}?\\nAnswer:' with ' no' / ' yes'", async () => {
  const b = await built("boolq");
  const raw = (await rawLines("boolq/dev.jsonl")).slice(0, 3);
  assertEquals(
    raw.map((r) => r.question),
    [
      "does ethanol take more energy make that produces",
      "is house tax and property tax are same",
      "is pain experienced in a missing body part or paralyzed area",
    ],
  );
  b.forEach((x, i) => {
    assertEquals(pairs(x), [
      [`${raw[i].passage}\nQuestion: ${raw[i].question}?\nAnswer:`, " no"],
      [`${raw[i].passage}\nQuestion: ${raw[i].question}?\nAnswer:`, " yes"],
    ]);
  });
  assert(
    b[0].requests[0].context.startsWith("All biomass goes through at least some of these steps"),
  );
  assertEquals(b.map((x) => x.target), [0, 1, 1]);
});

Deno.test("openbookqa: bare question_stem, ' {choice}' continuations", async () => {
  const b = await built("openbookqa");
  assertEquals(pairs(b[1]), [
    ["There is most likely going to be fog around:", " a marsh"],
    ["There is most likely going to be fog around:", " a tundra"],
    ["There is most likely going to be fog around:", " the plains"],
    ["There is most likely going to be fog around:", " a desert"],
  ]);
  assertEquals(
    b[0].requests[1].context,
    "A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking over their budget and expenses, they decide the best way to save money is to",
  );
  assertEquals(b[0].requests[1].continuation, " quit eating lunch out");
  assertEquals(pairs(b[2])[0], ["Predators eat", " lions"]);
  assertEquals(b.map((x) => x.target), [1, 0, 2]);
});

Deno.test("lambada_openai: text up to the last space, target ' ' + last word (no extra delimiter)", async () => {
  const b = await built("lambada_openai");
  const raw = (await rawLines("lambada/lambada_test.jsonl")).slice(0, 3).map((r) =>
    r.text as string
  );
  assertEquals(b.map((x) => x.requests[0].continuation), [" signs", " Shane", " insurance"]);
  b.forEach((x, i) => {
    const cut = raw[i].lastIndexOf(" ");
    assertEquals(x.requests[0].context, raw[i].slice(0, cut));
  });
  assert(
    b[0].requests[0].context.endsWith("his mouth curved in a confident grin, I don't care about"),
  );
});

Deno.test("mmlu: header, 5 dev shots first_n with ' {letter}' targets, test item, ' A'..' D'", async () => {
  const b = await built("mmlu_anatomy", 3);
  const dev0 = "What is the embryological origin of the hyoid bone?\n" +
    "A. The first pharyngeal arch\nB. The first and second pharyngeal arches\n" +
    "C. The second pharyngeal arch\nD. The second and third pharyngeal arches\nAnswer: D";
  const item0 =
    "A lesion causing compression of the facial nerve at the stylomastoid foramen will cause ipsilateral\n" +
    "A. paralysis of the facial muscles.\n" +
    "B. paralysis of the facial muscles and loss of taste.\n" +
    "C. paralysis of the facial muscles, loss of taste and lacrimation.\n" +
    "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.\nAnswer:";
  const ctx = b[0].requests[0].context;
  assert(
    ctx.startsWith(
      "The following are multiple choice questions (with answers) about anatomy.\n\n" + dev0 +
        "\n\n",
    ),
  );
  assert(ctx.endsWith("\n\n" + item0));
  assertEquals(ctx.split("\n\n").length, 1 + 5 + 1);
  assertEquals(b[0].requests.map((r) => r.continuation), [" A", " B", " C", " D"]);
  assertEquals(b[0].target, 0);
  assert(
    b[1].requests[0].context.endsWith(
      'A "dished face" profile is often associated with\nA. a protruding mandible due to reactivation of the condylar cartilage by acromegaly.\nB. a recessive maxilla due to failure of elongation of the cranial base.\nC. an enlarged frontal bone due to hydrocephaly.\nD. defective development of the maxillary air sinus.\nAnswer:',
    ),
  );
  assertEquals(b[1].target, 1);
  assertEquals(
    b[2].requests[0].context.split("\n\n").slice(0, 6),
    b[0].requests[0].context.split("\n\n").slice(0, 6),
  );
  // Subjects: 57, one test and one dev file each; a quoted multi-line CSV field parses.
  assertEquals(MMLU_SUBJECTS.length, 57);
  for (const s of MMLU_SUBJECTS) await Deno.stat(`${DS}mmlu/test/${s}_test.csv`);
  assertEquals(parseCsv('a,"b, ""c""\nd",e\nx,y,z\n'), [["a", 'b, "c"\nd', "e"], ["x", "y", "z"]]);
  // 0-shot: the header then the item.
  const z = await built("mmlu_anatomy", 1, 0);
  assertEquals(
    z[0].requests[0].context,
    "The following are multiple choice questions (with answers) about anatomy.\n\n" + item0,
  );
});

Deno.test("gsm8k: 5 shots drawn by random.Random(1234).sample in document order", async () => {
  const b = await built("gsm8k", 3);
  const train = await rawLines("gsm8k/train.jsonl");
  const test = (await rawLines("gsm8k/test.jsonl")).slice(0, 3);
  // CPython 3: r = random.Random(1234); [r.sample(range(7473), 5) for _ in range(3)]
  const idx = [
    [6374, 3610, 957, 61, 742],
    [7462, 6610, 4769, 286, 5501],
    [5677, 687, 806, 6279, 2905],
  ];
  b.forEach((x, i) => {
    const shots = idx[i].map((j) => `Question: ${train[j].question}\nAnswer: ${train[j].answer}`);
    assertEquals(x.prompt, shots.join("\n\n") + "\n\n" + `Question: ${test[i].question}\nAnswer:`);
    assertEquals(x.requests, []);
  });
  assert(b[0].prompt!.startsWith("Question: Jen and Tyler are gymnasts practicing flips."));
  assert(b[0].prompt!.endsWith("\nAnswer:") && b[0].prompt!.includes("Janet’s ducks lay 16 eggs"));
});

Deno.test("gsm8k answer extraction: strict-match and flexible-extract on crafted strings", () => {
  const cases: [string, string, string][] = [
    // response, strict-match, flexible-extract (lm-eval regexes, group_select 0 / -1)
    ["The answer is 5.\n#### 5", "5", "5"],
    ["#### 1,234", "1,234", "1,234"],
    ["#### -7", "-7", "-7"],
    ["#### 3.5", "3.5", "3.5"],
    ["so 2+2=4\n#### 4 apples", "4", "4"],
    ["#### 10\n#### 20", "10", "20"],
    ["no number here", "[invalid]", "[invalid]"],
    ["She has 12 eggs and sells 3", "[invalid]", "3"],
    ["It costs $18.", "[invalid]", "$18."],
    ["Total: 1,000,000 dollars", "[invalid]", "1,000,000"],
    ["-42 is the result", "[invalid]", "-42"],
    ["#### $5", "[invalid]", "$5"],
    ["####5", "[invalid]", "5"],
    ["#### 0.25\n", "0.25", "0.25"],
    ["The answer is 7", "[invalid]", "7"],
    ["x = 3, y = 4, so 34", "[invalid]", "34"],
    ["#### -1,5", "-1,5", "-1,5"],
    ["answer: 9.", "[invalid]", "9."],
    ["1 2 3", "[invalid]", "3"],
    ["#### 72\nQuestion", "72", "72"],
    ["It is 5 - 3 = 2", "[invalid]", "2"],
    ["#### .5", ".5", ".5"],
  ];
  assert(cases.length >= 20);
  for (const [s, strict, flex] of cases) {
    assertEquals(gsm8kExtract(s, "strict-match"), strict, `strict ${JSON.stringify(s)}`);
    assertEquals(gsm8kExtract(s, "flexible-extract"), flex, `flexible ${JSON.stringify(s)}`);
  }
  // exact_match normalisation: gold answers lose the worked solution, commas, $ and a final dot.
  assertEquals(gsm8kNormalize("She has 2 left.\n#### 1,200"), "1200");
  assertEquals(gsm8kNormalize("$18."), "18");
  assertEquals(gsm8kNormalize("1,000,000"), "1000000");
  assertEquals(gsm8kNormalize("-3"), "-3");
  assert(gsm8kNormalize("9.") === gsm8kNormalize("#### 9"));
});

Deno.test("PyRandom: CPython random.Random outputs (seeds 0, 42, 1234, 2^40+5, shuffle/sample/choices)", () => {
  // Values printed by CPython 3 for the same calls.
  assertEquals(new PyRandom(0).random(), 0.8444218515250481);
  assertEquals(new PyRandom(42).random(), 0.6394267984578837);
  const r = new PyRandom(1234);
  assertEquals(r.random(), 0.9664535356921388);
  assertEquals(r.sample([...Array(7473).keys()], 5), [3610, 957, 61, 742, 7462]);
  assertEquals(new PyRandom(2 ** 40 + 5).random(), 0.5043802970418443);
  const r3 = new PyRandom(3);
  const x = [...Array(10).keys()];
  r3.shuffle(x);
  assertEquals(x, [1, 5, 6, 0, 9, 4, 7, 2, 8, 3]);
  assertEquals(r3.sample([...Array(10).keys()], 3), [7, 4, 3]);
  assertEquals(r3.choices([...Array(100).keys()], 4), [19, 71, 54, 54]);
});

Deno.test("acc / acc_norm on a hand-computed two-choice example; stderr formulas", () => {
  // Choices "ab" (2 chars) and "abcdef" (6 chars); log-likelihoods −3 and −6.
  // acc: argmax(−3, −6) = 0. acc_norm: −3/2 = −1.5 vs −6/6 = −1 → choice 1.
  assertEquals(multipleChoiceMetrics([-3, -6], ["ab", "abcdef"], 1), { acc: 0, acc_norm: 1 });
  assertEquals(multipleChoiceMetrics([-3, -6], ["ab", "abcdef"], 0), { acc: 1, acc_norm: 0 });
  // Ties go to the first index (numpy argmax).
  assertEquals(multipleChoiceMetrics([-2, -2], ["a", "a"], 0), { acc: 1, acc_norm: 1 });
  // mean_stderr of [1, 0, 1, 1]: sample sd √(0.25) = 0.5 → 0.5/2 = 0.25.
  assertAlmostEquals(meanStderr([1, 0, 1, 1]), 0.25, 1e-15);
  // pooled stderr of one group equals that group's stderr.
  assertAlmostEquals(pooledStderr([0.1], [50]), 0.1, 1e-12);
  // bootstrap of a constant is 0; of the mean of a 0/1 list ≈ the binomial sd of the mean.
  assertEquals(bootstrapStderr((xs) => xs[0], [3, 3, 3], 10), 0);
  const xs = Array.from({ length: 200 }, (_, i) => i % 4 === 0 ? 1 : 0);
  const se = bootstrapStderr((v) => v.reduce((a, b) => a + b, 0) / v.length, xs, 2000);
  assertAlmostEquals(se, Math.sqrt(0.25 * 0.75 / 200), 0.004);
});

Deno.test("bad input: unknown task lists tasks; missing data file says where and how; too many shots", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const e = await assertRejects(() => evaluate(m, ["piqa", "nope"]), OptionError);
  assert(
    e.message.includes('"nope"') && e.message.includes("arc_easy") && e.message.includes("gsm8k"),
  );
  const tmp = await Deno.makeTempDir();
  try {
    const f = await assertRejects(
      () => evaluate(m, ["arc_easy"], { root: tmp, limit: 1 }),
      OfflineError,
    );
    assert(f.message.includes(`${tmp}/datasets/arc/ARC-Easy-Test.jsonl`), f.message);
    assert(f.message.includes("paths") && f.message.includes("QUANTLAB_DATA"), f.message);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const g = await assertRejects(
    () => evaluate(m, ["mmlu_anatomy"], { numFewshot: 6, limit: 1 }),
    OptionError,
  );
  assert(g.message.includes("6") && g.message.includes("only 5"), g.message);
  await assertRejects(
    () => evaluate(m, ["piqa"], { numFewshot: 1, limit: 1 }),
    OptionError,
    "no few-shot",
  );
  await assertRejects(() => evaluate(m, ["piqa"], { limit: 0 }), OptionError, "limit");
  assertThrows(() => getTask("mmlu_astrology"), OptionError, "mmlu_<subject>");
});

Deno.test("evaluate: piqa + mmlu_anatomy on stories260K with limit: records carry the protocol", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const rs = await evaluate(m, ["piqa", "mmlu_anatomy"], { limit: 4, logSamples: true });
  const [p, a] = rs;
  assertEquals(p.protocol.docs, { total: 1838, evaluated: 4 });
  assertEquals(p.requests, 8);
  assertEquals(p.protocol.files.length, 2);
  assert(/^[0-9a-f]{64}$/.test(p.protocol.dataChecksum));
  assertEquals(p.protocol.tokenization.addBos, true);
  assertEquals(a.protocol.numFewshot, 5);
  assertEquals(a.protocol.fewshot, { sampler: "first_n", seed: 1234 });
  // acc recomputed from the logged samples (oracle: argmax of the logged log-likelihoods).
  const acc = p.samples!.map((s) => {
    const ll = (s.resps as [number, boolean][]).map((r) => r[0]);
    return ll.indexOf(Math.max(...ll)) === s.target ? 1 : 0;
  });
  assertAlmostEquals(p.metrics[0].value, acc.reduce((x: number, y) => x + y, 0) / 4, 1e-12);
  assertEquals(JSON.parse(JSON.stringify(p)).task, "piqa");
});
