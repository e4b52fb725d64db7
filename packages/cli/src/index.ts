/**
 * `@trellis/cli` — programmatic entry points of the `trellis` command.
 *
 * @packageDocumentation
 */
export { type DemoOptions, type DemoRow, runDemo } from './demo.js';
export { table } from './table.js';
