// Sum the vitest JSON reports of every package into one closing line: "N passed, N failed, N skipped".
import { existsSync, readdirSync, readFileSync } from 'node:fs';

let passed = 0;
let failed = 0;
let skipped = 0;
const rows = [];
// test-results.json per package, plus test-results-<leg>.json of a second run (backend-efa on libfabric 2.x).
const reports = [];
for (const dir of readdirSync('packages')) {
  if (!existsSync(`packages/${dir}`) || !existsSync(`packages/${dir}/package.json`)) continue;
  for (const f of readdirSync(`packages/${dir}`).sort()) {
    const m = /^test-results(?:-(.+))?\.json$/.exec(f);
    if (m) reports.push([m[1] ? `${dir} (${m[1]})` : dir, `packages/${dir}/${f}`]);
  }
}
for (const [name, f] of reports) {
  const r = JSON.parse(readFileSync(f, 'utf8'));
  const skip = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  rows.push(
    `  ${name.padEnd(26)} ${String(r.numPassedTests).padStart(5)} passed ${String(r.numFailedTests).padStart(4)} failed ${String(skip).padStart(4)} skipped`,
  );
  passed += r.numPassedTests;
  failed += r.numFailedTests;
  skipped += skip;
}
if (rows.length === 0) {
  console.log('no test reports found');
  process.exit(1);
}
console.log(rows.join('\n'));
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
