/**
 * Task definitions matching lm-evaluation-harness's task configs by name, as data: where the
 * documents come from, how a document renders to a prompt (`docToText`), its choices and target,
 * the few-shot source and sampler, and the metrics. The configs transcribed (lm-eval `lm_eval/tasks`):
 *
 * | task | split | prompt | choices | metrics | version |
 * |---|---|---|---|---|---|
 * | piqa | validation | `Question: {goal}\nAnswer:` | sol1, sol2 | acc, acc_norm | 1 |
 * | arc_easy / arc_challenge | test | `Question: {question}\nAnswer:` | choices.text | acc, acc_norm | 1 |
 * | hellaswag | validation | `preprocess(activity_label + ": " + ctx)` | preprocessed endings | acc, acc_norm | 1 |
 * | winogrande | validation (xl dev) | partial scoring: contexts `sentence[:i] + option`, continuation `sentence[i+1:].strip()` | | acc | 1 |
 * | boolq | validation | `{passage}\nQuestion: {question}?\nAnswer:` | no, yes | acc | 2 |
 * | openbookqa | test | `{question_stem}` | choices.text | acc, acc_norm | 1 |
 * | lambada_openai | test | text up to the last space | target `" " + last word` | perplexity, acc | 1 |
 * | mmlu_{subject} | test, 5-shot from dev (`first_n`) | header + `{question.strip()}\nA. …\nD. {D}\nAnswer:` | A–D | acc | 1 |
 * | gsm8k | test, 5-shot from train (`random.Random(1234).sample`) | `Question: {question}\nAnswer:` | greedy until `Question:`, `</s>`, `<|im_end|>` | exact_match (strict-match, flexible-extract) | 3 |
 *
 * Every request's continuation is `target_delimiter + choice` (" " by default); few-shot examples
 * are `docToText(shot) + " " + target` joined and followed by "\n\n". Deviation (measured fact of
 * the local data): HellaSwag is read from llama.cpp's text layout, which joined `ctx_a` and
 * `ctx_b` without lm-eval's `ctx_b.capitalize()`, so a context whose `ctx_b` starts lower-case
 * (e.g. item 0, "… on a roof. he") differs from lm-eval's ("… on a roof. He") in that letter and
 * any capitals later in `ctx_b`; scores are close to lm-eval's but not bit-comparable.
 * @module
 */
import { FormatError, OfflineError, OptionError } from "../errors.ts";
import { dataRoot } from "../io/datasets.ts";

/** A document: a plain record of the dataset's fields. */
export type Doc = Record<string, unknown>;

/** lm-eval output types used here. */
export type OutputType = "multiple_choice" | "loglikelihood" | "generate_until";

/** A task definition (data, prompt, choices, target, metrics). */
export interface TaskDef {
  /** lm-eval task name. */
  name: string;
  /** lm-eval task version. */
  version: number;
  /** lm-eval output type. */
  outputType: OutputType;
  /** Dataset and split, in lm-eval's words (e.g. "allenai/ai2_arc ARC-Easy test"). */
  dataset: string;
  /** Folder under `<root>/datasets/` holding the files. */
  folder: string;
  /** Files of the evaluation split, relative to the folder. */
  files: string[];
  /** Files of the few-shot split, relative to the folder (none: few-shot unavailable). */
  fewshotFiles?: string[];
  /** lm-eval's few-shot sampler: "first_n" or "default" (`random.Random(seed).sample`). */
  sampler?: "first_n" | "default";
  /** Default number of few-shot examples. */
  defaultShots: number;
  /** Text before the few-shot examples (lm-eval `description`). */
  description?: string;
  /** Documents of the evaluation split from the files' texts. */
  parse(texts: string[], files: string[]): Doc[];
  /** Few-shot documents from the few-shot files' texts. */
  parseFewshot?(texts: string[], files: string[]): Doc[];
  /** The prompt of a document (winogrande: the gold choice index). */
  docToText(doc: Doc): string;
  /** The choices (winogrande: the contexts). */
  docToChoice?(doc: Doc): string[];
  /** Gold choice index, or the target text (loglikelihood / generation / winogrande). */
  docToTarget(doc: Doc): number | string;
  /** Gold index for `multipleInputs` tasks. */
  gold?(doc: Doc): number;
  /** Winogrande: choices are contexts, the target is the shared continuation. */
  multipleInputs?: boolean;
  /** Metrics reported. */
  metrics: string[];
  /** generate_until settings. */
  generation?: { until: string[]; maxGenToks: number };
  /** Between prompt and target (default " "). */
  targetDelimiter?: string;
  /** Between few-shot examples (default "\n\n"). */
  fewshotDelimiter?: string;
}

const str = (doc: Doc, k: string): string => doc[k] as string;

function jsonLines(text: string, file: string): Doc[] {
  const out: Doc[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      out.push(JSON.parse(line));
    } catch (e) {
      throw new FormatError(file, `line ${i + 1}: not valid JSON (${(e as Error).message})`);
    }
  });
  return out;
}

function need(doc: Doc, keys: string[], file: string, i: number): Doc {
  for (const k of keys) {
    if (doc[k] === undefined) throw new FormatError(file, `row ${i + 1}: field "${k}" missing`);
  }
  return doc;
}

/** RFC 4180 CSV rows (quoted fields may hold commas, quotes and newlines). */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let q = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (q) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else q = false;
      } else field += c;
    } else if (c === '"') q = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

/** lm-eval's HellaSwag `preprocess`. */
export function hellaswagPreprocess(text: string): string {
  text = text.trim();
  text = text.replaceAll(" [title]", ". ");
  text = text.replace(/\[.*?\]/g, "");
  return text.replaceAll("  ", " ");
}

/** The answer-extraction filters of lm-eval's gsm8k task (strict-match, flexible-extract). */
export function gsm8kExtract(
  response: string,
  filter: "strict-match" | "flexible-extract",
): string {
  if (filter === "strict-match") {
    const m = [...response.matchAll(/#### (\-?[0-9\.\,]+)/g)];
    return m.length ? m[0][1].trim() : "[invalid]";
  }
  const m = [...response.matchAll(/(-?[$0-9.,]{2,})|(-?[0-9]+)/g)];
  if (!m.length) return "[invalid]";
  const last = m[m.length - 1];
  const g = [last[1], last[2]].filter((x) => x);
  return g.length ? g[0].trim() : "[invalid]";
}

/** lm-eval's exact_match for gsm8k: regexes `,`, `$`, `(?s).*#### `, `\.$` removed, case-folded. */
export function gsm8kNormalize(s: string): string {
  return s.replace(/,/g, "").replace(/\$/g, "").replace(/[\s\S]*#### /g, "").replace(/\.$/g, "")
    .toLowerCase();
}

const arcChoices = (d: Doc) => ((d.question as Doc).choices as { text: string; label: string }[]);

function arcTask(name: string, file: string, split: string): TaskDef {
  return {
    name,
    version: 1,
    outputType: "multiple_choice",
    dataset: `allenai/ai2_arc ${split} test`,
    folder: "arc",
    files: [file],
    defaultShots: 0,
    parse: ([t], [f]) => jsonLines(t, f).map((d, i) => need(d, ["question", "answerKey"], f, i)),
    docToText: (d) => `Question: ${(d.question as Doc).stem}\nAnswer:`,
    docToChoice: (d) => arcChoices(d).map((c) => c.text),
    docToTarget: (d) => arcChoices(d).map((c) => c.label).indexOf(str(d, "answerKey")),
    metrics: ["acc", "acc_norm"],
  };
}

const MMLU_HEADER = (subject: string) =>
  `The following are multiple choice questions (with answers) about ${
    subject.replaceAll("_", " ")
  }.\n\n`;

/** The 57 MMLU subjects (lm-eval's `mmlu_{subject}` tasks). */
export const MMLU_SUBJECTS: readonly string[] = [
  "abstract_algebra",
  "anatomy",
  "astronomy",
  "business_ethics",
  "clinical_knowledge",
  "college_biology",
  "college_chemistry",
  "college_computer_science",
  "college_mathematics",
  "college_medicine",
  "college_physics",
  "computer_security",
  "conceptual_physics",
  "econometrics",
  "electrical_engineering",
  "elementary_mathematics",
  "formal_logic",
  "global_facts",
  "high_school_biology",
  "high_school_chemistry",
  "high_school_computer_science",
  "high_school_european_history",
  "high_school_geography",
  "high_school_government_and_politics",
  "high_school_macroeconomics",
  "high_school_mathematics",
  "high_school_microeconomics",
  "high_school_physics",
  "high_school_psychology",
  "high_school_statistics",
  "high_school_us_history",
  "high_school_world_history",
  "human_aging",
  "human_sexuality",
  "international_law",
  "jurisprudence",
  "logical_fallacies",
  "machine_learning",
  "management",
  "marketing",
  "medical_genetics",
  "miscellaneous",
  "moral_disputes",
  "moral_scenarios",
  "nutrition",
  "philosophy",
  "prehistory",
  "professional_accounting",
  "professional_law",
  "professional_medicine",
  "professional_psychology",
  "public_relations",
  "security_studies",
  "sociology",
  "us_foreign_policy",
  "virology",
  "world_religions",
]; // deno-fmt-ignore

function mmluRows(text: string, file: string): Doc[] {
  return parseCsv(text).filter((r) => r.length > 1 || r[0] !== "").map((r, i) => {
    if (r.length !== 6 || !"ABCD".includes(r[5]) || r[5].length !== 1) {
      throw new FormatError(file, `row ${i + 1}: expected question,A,B,C,D,answer-letter`);
    }
    return { question: r[0], choices: r.slice(1, 5), answer: "ABCD".indexOf(r[5]) };
  });
}

function mmluTask(subject: string): TaskDef {
  return {
    name: `mmlu_${subject}`,
    version: 1,
    outputType: "multiple_choice",
    dataset: `cais/mmlu ${subject} test (few-shot: dev)`,
    folder: "mmlu",
    files: [`test/${subject}_test.csv`],
    fewshotFiles: [`dev/${subject}_dev.csv`],
    sampler: "first_n",
    defaultShots: 5,
    description: MMLU_HEADER(subject),
    parse: ([t], [f]) => mmluRows(t, f),
    parseFewshot: ([t], [f]) => mmluRows(t, f),
    docToText: (d) => {
      const c = d.choices as string[];
      return `${str(d, "question").trim()}\nA. ${c[0]}\nB. ${c[1]}\nC. ${c[2]}\nD. ${
        c[3]
      }\nAnswer:`;
    },
    docToChoice: () => ["A", "B", "C", "D"],
    docToTarget: (d) => d.answer as number,
    metrics: ["acc"],
  };
}

function gsmRows(text: string, file: string): Doc[] {
  return jsonLines(text, file).map((d, i) => need(d, ["question", "answer"], file, i));
}

const TASKS: TaskDef[] = [
  {
    name: "piqa",
    version: 1,
    outputType: "multiple_choice",
    dataset: "baber/piqa validation",
    folder: "piqa",
    files: ["valid.jsonl", "valid-labels.lst"],
    defaultShots: 0,
    parse: ([items, labels], [f, fl]) => {
      const docs = jsonLines(items, f).map((d, i) => need(d, ["goal", "sol1", "sol2"], f, i));
      const ls = labels.split("\n").filter((l) => l.trim() !== "");
      if (ls.length !== docs.length) {
        throw new FormatError(fl, `${ls.length} labels for ${docs.length} items in ${f}`);
      }
      return docs.map((d, i) => {
        const l = ls[i].trim();
        if (l !== "0" && l !== "1") throw new FormatError(fl, `line ${i + 1}: label ${l}`);
        return { ...d, label: Number(l) };
      });
    },
    docToText: (d) => `Question: ${d.goal}\nAnswer:`,
    docToChoice: (d) => [str(d, "sol1"), str(d, "sol2")],
    docToTarget: (d) => d.label as number,
    metrics: ["acc", "acc_norm"],
  },
  arcTask("arc_easy", "ARC-Easy-Test.jsonl", "ARC-Easy"),
  arcTask("arc_challenge", "ARC-Challenge-Test.jsonl", "ARC-Challenge"),
  {
    name: "hellaswag",
    version: 1,
    outputType: "multiple_choice",
    dataset: "Rowan/hellaswag validation (llama.cpp text layout)",
    folder: "hellaswag",
    files: ["hellaswag_val_full.txt"],
    defaultShots: 0,
    parse: ([t], [f]) => {
      const lines = t.split("\n");
      if (lines[lines.length - 1] === "") lines.pop();
      if (lines.length % 6 !== 0) {
        throw new FormatError(f, `${lines.length} lines, not a multiple of 6`);
      }
      const out: Doc[] = [];
      for (let i = 0; i < lines.length; i += 6) {
        const label = Number(lines[i + 1]);
        if (!(label >= 0 && label <= 3)) throw new FormatError(f, `line ${i + 2}: bad label`);
        out.push({
          query: hellaswagPreprocess(lines[i]),
          choices: lines.slice(i + 2, i + 6).map(hellaswagPreprocess),
          gold: label,
        });
      }
      return out;
    },
    docToText: (d) => str(d, "query"),
    docToChoice: (d) => d.choices as string[],
    docToTarget: (d) => d.gold as number,
    metrics: ["acc", "acc_norm"],
  },
  {
    name: "winogrande",
    version: 1,
    outputType: "multiple_choice",
    dataset: "allenai/winogrande winogrande_xl validation",
    folder: "winogrande",
    files: ["dev.jsonl"],
    defaultShots: 0,
    multipleInputs: true,
    parse: ([t], [f]) =>
      jsonLines(t, f).map((d, i) => {
        need(d, ["sentence", "option1", "option2", "answer"], f, i);
        if (!str(d, "sentence").includes("_")) throw new FormatError(f, `row ${i + 1}: no "_"`);
        return d;
      }),
    docToText: (d) => String({ "1": 0, "2": 1 }[str(d, "answer")]),
    docToChoice: (d) => {
      const s = str(d, "sentence"), i = s.indexOf("_");
      return [s.slice(0, i) + d.option1, s.slice(0, i) + d.option2];
    },
    docToTarget: (d) => {
      const s = str(d, "sentence");
      return s.slice(s.indexOf("_") + 1).trim();
    },
    gold: (d) => ({ "1": 0, "2": 1 } as Record<string, number>)[str(d, "answer")],
    metrics: ["acc"],
  },
  {
    name: "boolq",
    version: 2,
    outputType: "multiple_choice",
    dataset: "super_glue boolq validation",
    folder: "boolq",
    files: ["dev.jsonl"],
    defaultShots: 0,
    parse: ([t], [f]) =>
      jsonLines(t, f).map((d, i) => {
        need(d, ["question", "passage", "answer"], f, i);
        return { ...d, label: d.answer ? 1 : 0 };
      }),
    docToText: (d) => `${d.passage}\nQuestion: ${d.question}?\nAnswer:`,
    docToChoice: () => ["no", "yes"],
    docToTarget: (d) => d.label as number,
    metrics: ["acc"],
  },
  {
    name: "openbookqa",
    version: 1,
    outputType: "multiple_choice",
    dataset: "allenai/openbookqa main test",
    folder: "openbookqa",
    files: ["test.jsonl"],
    defaultShots: 0,
    parse: ([t], [f]) => jsonLines(t, f).map((d, i) => need(d, ["question", "answerKey"], f, i)),
    docToText: (d) => (d.question as Doc).stem as string,
    docToChoice: (d) => arcChoices(d).map((c) => c.text),
    docToTarget: (d) => arcChoices(d).map((c) => c.label).indexOf(str(d, "answerKey").trimStart()),
    metrics: ["acc", "acc_norm"],
  },
  {
    name: "lambada_openai",
    version: 1,
    outputType: "loglikelihood",
    dataset: "EleutherAI/lambada_openai default test",
    folder: "lambada",
    files: ["lambada_test.jsonl"],
    defaultShots: 0,
    parse: ([t], [f]) => jsonLines(t, f).map((d, i) => need(d, ["text"], f, i)),
    docToText: (d) => str(d, "text").split(" ").slice(0, -1).join(" "),
    docToTarget: (d) => " " + str(d, "text").split(" ").at(-1),
    metrics: ["perplexity", "acc"],
  },
  ...MMLU_SUBJECTS.map(mmluTask),
  {
    name: "gsm8k",
    version: 3,
    outputType: "generate_until",
    dataset: "gsm8k main test (few-shot: train)",
    folder: "gsm8k",
    files: ["test.jsonl"],
    fewshotFiles: ["train.jsonl"],
    sampler: "default",
    defaultShots: 5,
    parse: ([t], [f]) => gsmRows(t, f),
    parseFewshot: ([t], [f]) => gsmRows(t, f),
    docToText: (d) => `Question: ${d.question}\nAnswer:`,
    docToTarget: (d) => str(d, "answer"),
    metrics: ["exact_match,strict-match", "exact_match,flexible-extract"],
    generation: { until: ["Question:", "</s>", "<|im_end|>"], maxGenToks: 256 },
  },
];

const BY_NAME = new Map(TASKS.map((t) => [t.name, t]));

/** Group names and their member tasks. */
export const TASK_GROUPS: Readonly<Record<string, readonly string[]>> = {
  mmlu: MMLU_SUBJECTS.map((s) => `mmlu_${s}`),
};

/** Every task name (groups included). */
export function taskNames(): string[] {
  return [...TASKS.filter((t) => !t.name.startsWith("mmlu_")).map((t) => t.name), "mmlu"]
    .concat(TASKS.filter((t) => t.name.startsWith("mmlu_")).map((t) => t.name));
}

/**
 * The definition of task `name`. Throws {@linkcode OptionError} (option "tasks") listing the
 * known tasks when there is none.
 */
export function getTask(name: string): TaskDef {
  const t = BY_NAME.get(name);
  if (!t) {
    const top = taskNames().filter((n) => !n.startsWith("mmlu_"));
    throw new OptionError(
      "tasks",
      `unknown task ${JSON.stringify(name)}; known: ${top.join(", ")}, mmlu_<subject> ` +
        `(57 subjects, e.g. mmlu_anatomy)`,
    );
  }
  return t;
}

/** Task names a list expands to (groups such as "mmlu" become their members). */
export function expandTasks(names: readonly string[]): string[] {
  const out: string[] = [];
  for (const n of names) {
    if (TASK_GROUPS[n]) out.push(...TASK_GROUPS[n]);
    else out.push(getTask(n).name);
  }
  return out;
}

/** Data location options. */
export interface TaskDataOptions {
  /** Data root holding `datasets/...` (default `$QUANTLAB_DATA` or `../shared/data`). */
  root?: string;
  /** Per-task folder overrides: task name (or dataset folder, e.g. "mmlu") → local folder. */
  paths?: Record<string, string>;
}

/** A file read for a task, with its sha256. */
export interface TaskFile {
  /** Path read. */
  path: string;
  /** sha256 (hex) of its bytes. */
  sha256: string;
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  return Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function readFiles(
  task: TaskDef,
  rel: string[],
  opts: TaskDataOptions,
): Promise<{ texts: string[]; files: TaskFile[] }> {
  const dir = opts.paths?.[task.name] ?? opts.paths?.[task.folder] ??
    `${opts.root ?? dataRoot()}/datasets/${task.folder}`;
  const texts: string[] = [];
  const files: TaskFile[] = [];
  for (const r of rel) {
    const path = `${dir}/${r}`;
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new OfflineError(
          `task ${task.name}: data file not found: ${path}. quantlab does not download ` +
            `datasets; pass { paths: { ${JSON.stringify(task.name)}: "<folder holding ${r}>" } } ` +
            `or { root } / QUANTLAB_DATA pointing at a folder with datasets/${task.folder}/${r} ` +
            `(default root: ../shared/data beside the repository).`,
        );
      }
      throw e;
    }
    texts.push(new TextDecoder().decode(bytes));
    files.push({ path, sha256: await sha256Hex(bytes) });
  }
  return { texts, files };
}

/**
 * The files a task reads (evaluation and few-shot splits) with their sha256, without parsing
 * them: what a result depends on, for the ledger's identity.
 */
export async function taskFiles(task: TaskDef, opts: TaskDataOptions = {}): Promise<TaskFile[]> {
  const rel = [...task.files, ...(task.fewshotFiles && task.parseFewshot ? task.fewshotFiles : [])];
  return (await readFiles(task, rel, opts)).files;
}

/** The evaluation documents of a task, with the files read. */
export async function loadTaskDocs(
  task: TaskDef,
  opts: TaskDataOptions = {},
): Promise<{ docs: Doc[]; files: TaskFile[] }> {
  const { texts, files } = await readFiles(task, task.files, opts);
  return { docs: task.parse(texts, files.map((f) => f.path)), files };
}

/** The few-shot documents of a task (empty when it has no few-shot split). */
export async function loadFewshotDocs(
  task: TaskDef,
  opts: TaskDataOptions = {},
): Promise<{ docs: Doc[]; files: TaskFile[] }> {
  if (!task.fewshotFiles || !task.parseFewshot) return { docs: [], files: [] };
  const { texts, files } = await readFiles(task, task.fewshotFiles, opts);
  return { docs: task.parseFewshot(texts, files.map((f) => f.path)), files };
}

/** The target text of a few-shot example. */
export function targetText(task: TaskDef, doc: Doc): string {
  const t = task.docToTarget(doc);
  if (typeof t === "string") return t;
  return task.docToChoice!(doc)[t];
}
