// {{name}}: a shiphat plugin. `describe` says what it is; `run` runs one attempt of a step.
// A thrown `{ tag: 'failed' | 'invalid-config' | 'transient', val }` is the step's error.

import { log } from 'shiphat:plugin/host@0.1.0';

const SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  properties: { name: { type: 'string', description: 'Who to greet.' } },
  additionalProperties: false,
};

export function describe() {
  return { name: '{{name}}', version: '0.1.0', description: 'Greets someone.', configSchema: JSON.stringify(SCHEMA) };
}

export function run(input) {
  let config;
  try {
    config = JSON.parse(input.config);
  } catch (e) {
    throw { tag: 'invalid-config', val: String(e) };
  }
  const name = config.name ?? 'world';
  log('info', `hello, ${name}`);
  return { outputs: JSON.stringify({ greeted: name }), summary: `greeted ${name}` };
}
