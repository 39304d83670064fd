// Builds semver-gate.wasm with componentize-js's JavaScript API:
//   node build.mjs [OUT.wasm]
// `jco componentize` on the command line is not used: its 0.23 path lookup fails here.
// The world is shiphat's `step` plus `wasi:filesystem/preopens`, to read granted files.
import { createRequire } from 'node:module';
import { cpSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// componentize-js from this folder's node_modules (`npm install`), or from the directory that
// `SHIPHAT_JS_TOOLS` names (one holding `node_modules/@bytecodealliance/componentize-js`).
const tools = process.env.SHIPHAT_JS_TOOLS;
const { componentize } = tools
  ? await import(pathToFileURL(locate(tools)).href)
  : await import('@bytecodealliance/componentize-js');

function locate(dir) {
  const main = join(resolve(dir), 'node_modules/@bytecodealliance/componentize-js');
  const pkg = createRequire(import.meta.url)(join(main, 'package.json'));
  const entry = pkg.exports?.import ?? pkg.main;
  return join(main, entry);
}

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, 'semver-gate.wasm'));
const contract = process.env.SHIPHAT_WIT ?? join(here, '../../../wit');

// A WIT package of this plugin's own world, with shiphat's contract and WASI as its deps.
const wit = mkdtempSync(join(tmpdir(), 'semver-gate-wit-'));
try {
  mkdirSync(join(wit, 'deps'));
  cpSync(join(contract, 'deps'), join(wit, 'deps'), { recursive: true });
  cpSync(join(contract, 'shiphat.wit'), join(wit, 'deps', 'shiphat.wit'));
  writeFileSync(
    join(wit, 'world.wit'),
    `package shiphat:semver-gate;

world gate {
    include shiphat:plugin/step@0.1.0;
    import wasi:filesystem/preopens@0.2.12;
}
`,
  );
  const started = Date.now();
  const { component } = await componentize({
    sourcePath: join(here, 'semver-gate.js'),
    witPath: wit,
    worldName: 'gate',
    // Only what the plugin uses; shiphat provides the rest of WASI 0.2 anyway.
    disableFeatures: ['random', 'stdio', 'clocks', 'http', 'fetch-event'],
  });
  writeFileSync(out, component);
  console.log(`built ${out} (${component.length} bytes) in ${Date.now() - started} ms`);
} finally {
  rmSync(wit, { recursive: true, force: true });
}
