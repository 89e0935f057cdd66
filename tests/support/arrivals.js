// Results that arrive over time (a subscription's events), for a test to wait on: plain Node,
// no dependencies, imported by relative path.

/**
 * Results as they arrive, for a test to wait on: `push` each one, `nth(n, ms)` waits for the
 * n-th (0-based) and returns `{ at, result }`.
 */
export function arrivals() {
  const results = [];
  const waiters = [];
  return {
    results,
    push(result) {
      results.push({ at: Date.now(), result });
      waiters.splice(0).forEach((wake) => wake());
    },
    async nth(n, ms = 10_000) {
      const deadline = Date.now() + ms;
      while (results.length <= n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no result #${n} within ${ms} ms: ${JSON.stringify(results)}`);
        await new Promise((wake) => {
          waiters.push(wake);
          setTimeout(wake, Math.min(left, 100));
        });
      }
      return results[n];
    },
  };
}
