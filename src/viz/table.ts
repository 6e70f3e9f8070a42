/**
 * Results tables as HTML (Jupyter) and aligned plain text (terminals) from plain rows.
 * @module
 */
import { withDisplay } from "./display.ts";

/** One result row; any extra keys become extra columns. */
export interface ResultRow {
  /** Method label, e.g. "fp16", "rtn", "gptq". */
  method: string;
  /** Nominal bit width (a number, or a label such as "3/4"). */
  bits?: number | string;
  /** Storage cost in bits per weight, including scales and zeros. */
  bitsPerWeight?: number;
  /** Perplexity. */
  ppl?: number;
  /** Wall time, seconds. */
  seconds?: number;
  /** Extra columns (numbers, strings, booleans; null/undefined print as a dash). */
  [column: string]: unknown;
}

/** Options of {@link resultsTable}. */
export interface ResultsTableOptions {
  /** Columns to show, in order (default: method, bits, bitsPerWeight, ppl, seconds that occur,
   * then other keys in first-seen order). */
  columns?: string[];
  /** Header labels by column key (defaults: "bits/weight", "perplexity", "time (s)", ...). */
  headers?: Record<string, string>;
  /** Decimal digits by column key (defaults: bitsPerWeight 3, ppl 2, seconds 2; other
   * non-integers print with 4 significant digits). */
  digits?: Record<string, number>;
  /** A column where the lowest value is best and is shown in bold (default "ppl"; false: none). */
  best?: string | false;
  /** A title (HTML caption, and a first line of the text). */
  title?: string;
}

/** A rendered results table. In Jupyter it displays as HTML when it is a cell's last
 * expression; `String(table)` is the text form. */
export interface ResultsTable {
  /** The column keys, in order. */
  columns: string[];
  /** The rows as given. */
  rows: ResultRow[];
  /** An HTML `<table>` (self-contained inline styles). */
  html: string;
  /** An aligned plain-text table. */
  text: string;
}

const KNOWN = ["method", "bits", "bitsPerWeight", "ppl", "seconds"];
const HEADERS: Record<string, string> = {
  method: "method",
  bits: "bits",
  bitsPerWeight: "bits/weight",
  ppl: "perplexity",
  seconds: "time (s)",
};
const DIGITS: Record<string, number> = { bitsPerWeight: 3, ppl: 2, seconds: 2 };

function format(v: unknown, digits: number | undefined): string {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return String(v);
    if (digits !== undefined) return v.toFixed(digits);
    if (Number.isInteger(v)) return String(v);
    return Number(v.toPrecision(4)).toString();
  }
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

/**
 * Builds a results table from rows like `{ method, bits, bitsPerWeight, ppl, seconds, ... }`:
 * `.html` for notebooks (bold best perplexity) and `.text` for terminals.
 */
export function resultsTable(rows: ResultRow[], opts: ResultsTableOptions = {}): ResultsTable {
  const keys: string[] = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!keys.includes(k)) keys.push(k);
  const columns = opts.columns ??
    [...KNOWN.filter((k) => keys.includes(k)), ...keys.filter((k) => !KNOWN.includes(k))];
  const headers = columns.map((c) => opts.headers?.[c] ?? HEADERS[c] ?? c);
  const digits = { ...DIGITS, ...opts.digits };
  const cells = rows.map((r) => columns.map((c) => format(r[c], digits[c])));
  const numeric = columns.map((c) =>
    rows.some((r) => typeof r[c] === "number") &&
    rows.every((r) => r[c] === undefined || r[c] === null || typeof r[c] === "number")
  );
  const bestKey = opts.best === undefined ? "ppl" : opts.best;
  let bestRow = -1;
  if (bestKey !== false && columns.includes(bestKey)) {
    let best = Infinity;
    rows.forEach((r, i) => {
      const v = r[bestKey];
      if (typeof v === "number" && v < best) {
        best = v;
        bestRow = i;
      }
    });
  }
  const bestCol = bestKey === false ? -1 : columns.indexOf(bestKey);

  // text
  const widths = columns.map((_, j) =>
    Math.max(headers[j].length, ...cells.map((row) => row[j].length))
  );
  const pad = (s: string, j: number) => numeric[j] ? s.padStart(widths[j]) : s.padEnd(widths[j]);
  const lines = [
    headers.map(pad).join("  ").trimEnd(),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...cells.map((row) => row.map(pad).join("  ").trimEnd()),
  ];
  if (opts.title) lines.unshift(opts.title);
  const text = lines.join("\n");

  // html
  const th = "padding:4px 10px;border-bottom:2px solid #444;";
  const td = "padding:3px 10px;border-bottom:1px solid #ddd;";
  const align = (j: number) => `text-align:${numeric[j] ? "right" : "left"};`;
  const head = headers.map((h, j) => `<th style="${th}${align(j)}">${escapeHtml(h)}</th>`)
    .join("");
  const body = cells.map((row, i) =>
    "<tr>" +
    row.map((s, j) => {
      const b = i === bestRow && j === bestCol;
      const content = b ? `<b>${escapeHtml(s)}</b>` : escapeHtml(s);
      return `<td style="${td}${align(j)}font-variant-numeric:tabular-nums;">${content}</td>`;
    }).join("") +
    "</tr>"
  ).join("\n");
  const caption = opts.title
    ? `<caption style="caption-side:top;text-align:left;font-weight:bold;padding:4px 0;">${
      escapeHtml(opts.title)
    }</caption>`
    : "";
  const html =
    `<table class="quantlab-results" style="border-collapse:collapse;font-family:sans-serif;font-size:13px;">` +
    `${caption}<thead><tr>${head}</tr></thead>\n<tbody>\n${body}\n</tbody></table>`;

  const table: ResultsTable = { columns, rows, html, text };
  Object.defineProperty(table, "toString", { value: () => text, enumerable: false });
  return withDisplay(table, () => ({ "text/html": html, "text/plain": text }));
}
