// Argument checks shared by the stores (internal: not exported from the package).
import { TrellisError } from '@trellis/core';

/**
 * An options argument must be an object: `undefined`, `null`, an array or a number is refused, not
 * read; so is a key that is not in `shape` (`{host, port, timeoutMs?}`: a typo would be ignored).
 */
export function checkOptions(op: string, opts: unknown, shape: string): void {
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: pass an options object ${shape}, got ${opts === null ? 'null' : Array.isArray(opts) ? 'an array' : typeof opts}`,
    );
  const fields = shape
    .replace(/[{}?\s]/g, '')
    .split(',')
    .filter(Boolean);
  for (const k in opts)
    if (!fields.includes(k))
      throw new TrellisError(
        'INVALID_ARGUMENT',
        `${op}: ${JSON.stringify(k)} is not an option (pass an options object ${shape})`,
      );
}

/** An optional options argument: absent, or an object (see {@link checkOptions}). */
export function checkOptionalOptions(op: string, opts: unknown, shape: string): void {
  if (opts !== undefined) checkOptions(op, opts, shape);
}

/** A value as an error message shows it: a string quoted (`"0"` is not the number 0). */
export function shown(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

/** timeoutMs, where given, is a finite number >= 0 (> 0 where `positive`). */
export function checkTimeoutMs(op: string, timeoutMs: unknown, positive = false): void {
  if (
    timeoutMs !== undefined &&
    (typeof timeoutMs !== 'number' ||
      !Number.isFinite(timeoutMs) ||
      timeoutMs < 0 ||
      (positive && timeoutMs === 0))
  )
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: timeoutMs must be a finite number ${positive ? '> 0' : '>= 0'}, got ${shown(timeoutMs)}`,
    );
}

/** set's value and join's member, value and callback. */
export function checkValue(op: string, value: unknown): void {
  if (typeof value !== 'string') throw new TrellisError('INVALID_ARGUMENT', `${op}: value must be a string`);
}

export function checkJoin(op: string, member: unknown, value: unknown, onChange: unknown): void {
  checkName(op, 'member', member);
  checkValue(op, value);
  if (onChange !== undefined && typeof onChange !== 'function')
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: onChange must be a function (called with the group's members), or left out`,
    );
}

/** A key, barrier name or group name: a non-empty string of at most 1024 characters. */
export function checkName(op: string, what: string, v: unknown): void {
  if (typeof v !== 'string' || v.length === 0 || v.length > 1024)
    throw new TrellisError(
      'INVALID_ARGUMENT',
      `${op}: ${what} must be a non-empty string of at most 1024 characters, got ${typeof v === 'string' && v.length > 1024 ? `${v.length} characters` : shown(v)}`,
    );
}

/** `onChange`, called only with a membership other than the one it was called with last. */
export function onChangeOnce(
  onChange: (members: Record<string, string>) => void,
): (members: Record<string, string>) => void {
  let last: string | undefined;
  return (members) => {
    const key = JSON.stringify(Object.entries(members).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    if (key === last) return;
    last = key;
    onChange(members);
  };
}
