// Runs an ONNX file with ONNX Runtime (npm's onnxruntime-node) on a float32 batch.
//
// usage: NODE_PATH=DIR/node_modules node onnx_ort_run.js MODEL.onnx INPUT.f32 OUTPUT.f32 N C H W
// INPUT.f32 holds N*C*H*W little-endian floats; OUTPUT.f32 receives the output "logits".
// Exit 77 (skipped, with the reason) when onnxruntime-node cannot be loaded; exit 1 with ONNX
// Runtime's words when it cannot load or run the model. Used by tests/models/onnx_test.cc.
'use strict';
const fs = require('fs');

let ort;
try {
  ort = require('onnxruntime-node');
} catch (error) {
  console.log(`SKIP: onnxruntime-node cannot be loaded (${String(error.message).split('\n')[0]})`);
  process.exit(77);
}

async function main() {
  const [model, input, output] = process.argv.slice(2, 5);
  const dims = process.argv.slice(5, 9).map(Number);
  const bytes = fs.readFileSync(input);
  const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  let session;
  try {
    session = await ort.InferenceSession.create(model, {intraOpNumThreads: 1, interOpNumThreads: 1});
  } catch (error) {
    console.log(`ONNX Runtime failed to load the model: ${error.message}`);
    process.exit(1);
  }
  const result = await session.run({input: new ort.Tensor('float32', Float32Array.from(data), dims)});
  const logits = result.logits;
  fs.writeFileSync(output, Buffer.from(logits.data.buffer, logits.data.byteOffset, logits.data.length * 4));
  console.log(`ONNX Runtime: output [${logits.dims}]`);
}

main().catch((error) => {
  console.log(`ONNX Runtime failed: ${error.message}`);
  process.exit(1);
});
