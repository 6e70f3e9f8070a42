/**
 * Side-by-side chat replies (the same conversation to FP and quantized models) as HTML for
 * notebooks (a table with one column per model) and plain text elsewhere.
 * @module
 */
import { withDisplay } from "./display.ts";

/** The input: a conversation and each model's reply. */
export interface ChatComparison {
  /** The conversation sent. */
  messages: { role: string; content: string }[];
  /** Label → reply (only `reply` is shown). */
  replies: Record<string, { reply: string; tokens?: number }>;
}

/** A renderable side-by-side view (`html`, `text`; renders itself in Jupyter). */
export interface ChatView {
  /** The HTML table. */
  html: string;
  /** Plain text. */
  text: string;
  /** The plain text. */
  toString(): string;
}

/** HTML-escapes `s`. */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

/** The side-by-side view of a {@linkcode ChatComparison}. */
export function chatSideBySide(c: ChatComparison): ChatView {
  const labels = Object.keys(c.replies);
  const conv = c.messages.map((m) =>
    `<div><b>${escapeHtml(m.role)}:</b> <span style="white-space:pre-wrap">${
      escapeHtml(m.content)
    }</span></div>`
  ).join("");
  const head = labels.map((l) => `<th style="text-align:left">${escapeHtml(l)}</th>`).join("");
  const cells = labels.map((l) =>
    `<td style="vertical-align:top;white-space:pre-wrap;border:1px solid #ccc;padding:6px">${
      escapeHtml(c.replies[l].reply)
    }</td>`
  ).join("");
  const html = `<div class="quantlab-chat">${conv}<table style="table-layout:fixed;width:100%">` +
    `<tr>${head}</tr><tr>${cells}</tr></table></div>`;
  const text = [
    ...c.messages.map((m) => `${m.role}: ${m.content}`),
    ...labels.map((l) => `--- ${l} ---\n${c.replies[l].reply}`),
  ].join("\n");
  const view: ChatView = { html, text, toString: () => text };
  return withDisplay(view, () => ({ "text/html": html, "text/plain": text }));
}
