// semver-gate: fails the step when the release being deployed is not newer than the one
// currently deployed.
//
// A shiphat plugin in JavaScript, built with componentize-js (see README.md). The current
// version comes from `with: { current: ... }`, or is read from a file under a directory the
// step's `allow.read` grants (`current_file`). Nothing else is reachable.

import { log } from 'shiphat:plugin/host@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

const SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  properties: {
    release: { type: 'string', description: 'The release being deployed, semver (a leading `v` is allowed).' },
    current: { type: 'string', description: 'The release deployed now.' },
    current_file: { type: 'string', description: 'A file holding the release deployed now, under an `allow.read` directory.' },
  },
  required: ['release'],
  additionalProperties: false,
};

const SEMVER = /^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$/;

function parse(text, key) {
  const m = SEMVER.exec(String(text).trim());
  if (!m) {
    throw { tag: 'invalid-config', val: `\`${key}\` is \`${text}\`, which is not a semver version like \`1.4.2\`` };
  }
  return { major: BigInt(m[1]), minor: BigInt(m[2]), patch: BigInt(m[3]), pre: m[4] ? m[4].split('.') : [] };
}

// Semver precedence: -1, 0 or 1.
function compare(a, b) {
  for (const k of ['major', 'minor', 'patch']) {
    if (a[k] !== b[k]) return a[k] < b[k] ? -1 : 1;
  }
  if (a.pre.length === 0 || b.pre.length === 0) {
    return a.pre.length === b.pre.length ? 0 : a.pre.length === 0 ? 1 : -1;
  }
  for (let i = 0; i < Math.max(a.pre.length, b.pre.length); i++) {
    if (i >= a.pre.length) return -1;
    if (i >= b.pre.length) return 1;
    const [x, y] = [a.pre[i], b.pre[i]];
    const [nx, ny] = [/^\d+$/.test(x), /^\d+$/.test(y)];
    if (nx && ny) {
      const d = BigInt(x) - BigInt(y);
      if (d !== 0n) return d < 0n ? -1 : 1;
    } else if (nx !== ny) {
      return nx ? -1 : 1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

// Reads a whole file through wasi:filesystem, from the preopened directory that holds it.
function readGranted(path) {
  const clean = path.replace(/^\.\//, '');
  const dirs = getDirectories();
  for (const [dir, name] of dirs) {
    const prefix = name.replace(/^\.\//, '').replace(/\/$/, '');
    if (clean.startsWith(prefix + '/')) {
      let file;
      try {
        file = dir.openAt({ symlinkFollow: false }, clean.slice(prefix.length + 1), {}, { read: true });
      } catch (e) {
        throw { tag: 'failed', val: { message: `cannot read \`${path}\`: ${e.payload ?? e}`, outputs: '' } };
      }
      const chunks = [];
      let offset = 0n;
      for (;;) {
        const [bytes, end] = file.read(65536n, offset);
        chunks.push(bytes);
        offset += BigInt(bytes.length);
        if (end || bytes.length === 0) break;
      }
      return new TextDecoder().decode(Buffer_concat(chunks));
    }
  }
  const granted = dirs.map(([, n]) => `\`${n}\``).join(', ') || 'none';
  throw {
    tag: 'failed',
    val: { message: `cannot read \`${path}\`: it is outside the step's grants (granted: ${granted}); add its directory to \`allow.read\``, outputs: '' },
  };
}

function Buffer_concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

export function describe() {
  return {
    name: 'semver-gate',
    version: '0.1.0',
    description: 'Fails the step when the release being deployed is not newer than the one deployed now.',
    configSchema: JSON.stringify(SCHEMA),
  };
}

export function run(input) {
  const config = JSON.parse(input.config);
  let currentText = config.current;
  if (currentText === undefined) {
    if (config.current_file === undefined) {
      throw { tag: 'invalid-config', val: 'give `current` (the release deployed now) or `current_file` (a file holding it)' };
    }
    currentText = readGranted(config.current_file).trim();
  }
  const release = parse(config.release, 'release');
  const current = parse(currentText, config.current === undefined ? 'current_file' : 'current');
  const outputs = JSON.stringify({ release: config.release, current: currentText });
  if (compare(release, current) <= 0) {
    throw {
      tag: 'failed',
      val: { message: `release ${config.release} is not newer than the deployed ${currentText}`, outputs },
    };
  }
  log('info', `release ${config.release} is newer than the deployed ${currentText}`);
  return { outputs, summary: `${config.release} > ${currentText}` };
}
