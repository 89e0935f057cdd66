// Starts the built gateway (or another server, such as a router) for a Node suite: plain Node,
// no dependencies, imported by relative path. (tests/browser predates it and starts its own.)

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { freePort } from './net.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.CHECKOUT_GATEWAY_BIN ?? resolve(REPO, 'target', 'debug', 'checkout-gateway');
const READY_TIMEOUT_MS = 20_000;

/** Every child started, so that an exit for any reason still kills it. */
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/**
 * `checkout-gateway` with `args` (e.g. `['--demo']`) on a free port of 127.0.0.1, once its
 * /readyz answers 200. Returns its base URL, `stop()`, and the tail of its output.
 */
export async function startGateway(args, env = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`checkout-gateway binary not found at ${BIN}: run \`cargo build\` in ${REPO} or set CHECKOUT_GATEWAY_BIN`);
  }
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const { stop, output } = await startProcess('checkout-gateway', BIN, args, {
    env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`, RUST_LOG: 'warn', ...env },
    readyUrl: `${base}/readyz`,
  });
  return { base, stop, output };
}

/**
 * Starts `command` (called `name` in messages) and waits until `readyUrl` answers 200 (within
 * `timeoutMs`); the child is killed if it exits or is not ready by then. Returns `stop()`
 * (SIGTERM, then SIGKILL after 5 s) and the tail of its output.
 */
export async function startProcess(name, command, args, { env, cwd, readyUrl, timeoutMs = READY_TIMEOUT_MS }) {
  const child = spawn(command, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  const keep = (chunk) => {
    output = (output + chunk.toString()).slice(-16_384);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = once(child, 'exit');
  let spawnError = null;
  child.on('error', (err) => {
    spawnError = err;
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      if (!(await Promise.race([exited.then(() => true), sleep(5_000, false)]))) {
        child.kill('SIGKILL');
        await exited;
      }
    }
    children.delete(child);
  };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (spawnError || child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(
        `${name} exited before it was ready (${spawnError ?? `code ${child.exitCode}, signal ${child.signalCode}`}):\n${output}`,
      );
    }
    try {
      const res = await fetch(readyUrl, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${name} not ready within ${timeoutMs} ms:\n${output}`);
    }
    await sleep(100);
  }
  return { stop, output: () => output };
}
