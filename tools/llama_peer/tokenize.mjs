// quantlab's peer tokenizer: llama.cpp's (node-llama-cpp 3.21.1, pinned) tokenization of texts with
// a GGUF file's vocabulary. Reads { model, texts: string[] } as JSON on argv[2] and prints one JSON
// line: { ids: number[][] } (each text tokenized without BOS and without parsing special tokens).
import { getLlama } from "node-llama-cpp";

const req = JSON.parse(process.argv[2]);
const llama = await getLlama({ gpu: false, logLevel: "error", build: "never" });
const model = await llama.loadModel({ modelPath: req.model, gpuLayers: 0, vocabOnly: true });
const ids = req.texts.map((t) => Array.from(model.tokenize(t, false)));
console.log(JSON.stringify({ ids }));
await model.dispose();
await llama.dispose();
