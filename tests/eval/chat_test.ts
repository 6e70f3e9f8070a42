/**
 * Chat templates through transformers.js' apply_chat_template (renderings written out by hand
 * from the Jinja templates), the reply equal to `generate` on the rendered text, and the
 * side-by-side view.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { chat, chatCompare, renderChat } from "../../src/eval/chat.ts";
import { generate } from "../../src/eval/generate.ts";
import { loadModel } from "../../src/models/load.ts";
import { chatSideBySide } from "../../src/viz/chat_view.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

// ChatML (Qwen-style) and a Llama-2-style template, as tokenizer_config.json holds them.
const CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + " +
  "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}" +
  "{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA2 = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}" +
  "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + " +
  "' ' + eos_token }}{% endif %}{% endfor %}";

const MSGS = [
  { role: "system", content: "You tell stories." },
  { role: "user", content: "Tell me about a cat." },
];

Deno.test("renderChat: ChatML and Llama-2 templates render as written out by hand", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  assertEquals(
    await renderChat(m, MSGS, { chatTemplate: CHATML }),
    "<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me about a cat." +
      "<|im_end|>\n<|im_start|>assistant\n",
  );
  assertEquals(
    await renderChat(m, MSGS, { chatTemplate: CHATML, addGenerationPrompt: false }),
    "<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me about a cat." +
      "<|im_end|>\n",
  );
  assertEquals(
    await renderChat(m, [
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello." },
      { role: "user", content: "A story?" },
    ], { chatTemplate: LLAMA2 }),
    "<s>[INST] Hi [/INST] Hello. </s>[INST] A story? [/INST]",
  );
});

Deno.test("chat: reply is generate() on the rendered prompt without a second BOS; compare + view", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const r = await chat(m, [{ role: "user", content: "Once upon a time" }], {
    chatTemplate: "{{ bos_token }}{{ messages[0]['content'] }}",
    maxNewTokens: 16,
  });
  assertEquals(r.prompt, "<s>Once upon a time");
  const g = await generate(m, "Once upon a time", { maxNewTokens: 16 }); // BOS added by encode
  assertEquals(r.reply, g.completion);
  assert(r.reply.length > 0);
  const c = await chatCompare({ fp: m, same: m }, [{ role: "user", content: "Lily & <Tom>" }], {
    chatTemplate: "{{ messages[0]['content'] }}",
    maxNewTokens: 8,
  });
  assertEquals(c.replies.fp.reply, c.replies.same.reply);
  const v = chatSideBySide(c);
  assert(v.html.includes("Lily &amp; &lt;Tom&gt;") && v.html.includes("<th"));
  assertEquals(v.html.split("<td").length - 1, 2);
  assert(String(v).includes("--- fp ---"));
});

Deno.test("chat: a model without a chat template is a typed error naming where it looked", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const e = await assertRejects(() => renderChat(m, MSGS), OptionError, "chatTemplate");
  assert(e.message.includes("tokenizer_config.json"), e.message);
  await assertRejects(() => renderChat(m, [], { chatTemplate: CHATML }), OptionError, "messages");
});
