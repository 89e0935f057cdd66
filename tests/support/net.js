// Shared by the Node test suites (federation, subscriptions, browser): plain Node, no
// dependencies, imported by relative path.

import net from 'node:net';

/** A port that was free a moment ago on 127.0.0.1 (the OS picks it; we release it for a child). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}
