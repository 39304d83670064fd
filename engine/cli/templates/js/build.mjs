// Builds {{name}}.wasm with componentize-js's JavaScript API: `npm install && node build.mjs`.
// (`jco componentize` on the command line is not used: its 0.23 path lookup fails.)
// SHIPHAT_JS_TOOLS may name another directory whose node_modules holds componentize-js.
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const tools = process.env.SHIPHAT_JS_TOOLS;
const { componentize } = tools
  ? await import(pathToFileURL(locate(tools)).href)
  : await import('@bytecodealliance/componentize-js');

function locate(dir) {
  const main = join(resolve(dir), 'node_modules/@bytecodealliance/componentize-js');
  const pkg = createRequire(import.meta.url)(join(main, 'package.json'));
  return join(main, pkg.exports?.import ?? pkg.main);
}

const { component } = await componentize({
  sourcePath: join(here, 'plugin.js'),
  witPath: join(here, 'wit'),
  worldName: 'step',
});
writeFileSync(join(here, '{{name}}.wasm'), component);
console.log(`built {{name}}.wasm (${component.length} bytes)`);
