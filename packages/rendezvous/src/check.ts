// Argument checks shared by the stores (internal: not exported from the package).
import { TrellisError } from '@trellis/core';

/** An options argument must be an object: `undefined`, `null`, an array or a number is refused, not read. */
export function checkOptions(op: string, opts: unknown, shape: string): void {
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: pass an options object ${shape}, got ${opts === null ? 'null' : Array.isArray(opts) ? 'an array' : typeof opts}`,
    );
}
