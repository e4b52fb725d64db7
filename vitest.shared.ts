import { defineConfig } from 'vitest/config';

/** Test settings every package shares: forked workers (native addons), a JSON report for the summary line. */
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 20_000,
    reporters: ['default', ['json', { outputFile: 'test-results.json' }]],
  },
});
