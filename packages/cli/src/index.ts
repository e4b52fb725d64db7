/**
 * `@trellis/cli` — programmatic entry points of the `trellis` command.
 *
 * @packageDocumentation
 */

export { type BenchOptions, type BenchResult, type BenchRow, benchHtml, runBench } from './bench.js';
export { bestLocalProvider, type ClusterDemoOptions, type ClusterRow, runClusterDemo } from './cluster.js';
export { type DemoOptions, type DemoRow, runDemo } from './demo.js';
export { type Check, type DoctorReport, runDoctor } from './doctor.js';
export { runSoak, type SoakOptions, type SoakProcessReport, type SoakReport } from './soak.js';
export { table } from './table.js';
