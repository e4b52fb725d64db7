// Vitest settings every package shares (forked workers for native addons, a JSON report per run).
import { defineConfig } from 'vitest/config';

/** Test settings every package shares: forked workers (native addons), a JSON report for the summary line. */
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 20_000,
    // TRELLIS_TEST_REPORT names the JSON report of a second run of a package's tests (backend-efa
    // on libfabric 2.x: scripts/libfabric2-leg.sh), which scripts/test-summary.mjs counts too.
    reporters: ['default', ['json', { outputFile: process.env.TRELLIS_TEST_REPORT ?? 'test-results.json' }]],
  },
});
