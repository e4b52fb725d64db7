// TrellisError (codes, details, isTrellisError) and CallSite (the submitting call's stack).
import { describe, expect, it } from 'vitest';
import { CallSite, isTrellisError, TRELLIS_ERROR_CODES, TrellisError } from '../src/index.js';

describe('TrellisError', () => {
  it('has a unique, documented list of stable codes', () => {
    expect(new Set(TRELLIS_ERROR_CODES).size).toBe(TRELLIS_ERROR_CODES.length);
    expect(TRELLIS_ERROR_CODES).toContain('PEER_LOST');
    expect(TRELLIS_ERROR_CODES).toContain('CONNECTION_RESET');
    expect(TRELLIS_ERROR_CODES).toHaveLength(20);
  });

  it('carries code, errno, provider message, peer, nic, op and cause', () => {
    const cause = new Error('root');
    const e = new TrellisError('PROVIDER_ERROR', 'boom', {
      errno: 113,
      providerMessage: 'No route',
      peer: 'tna1:x',
      nic: 2,
      op: 'submitImm',
      cause,
    });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('TrellisError');
    expect([e.code, e.errno, e.providerMessage, e.peer, e.nic, e.op]).toEqual([
      'PROVIDER_ERROR',
      113,
      'No route',
      'tna1:x',
      2,
      'submitImm',
    ]);
    expect(e.cause).toBe(cause);
    expect(isTrellisError(e)).toBe(true);
    expect(isTrellisError(e, 'PROVIDER_ERROR')).toBe(true);
    expect(isTrellisError(e, 'TIMEOUT')).toBe(false);
    expect(isTrellisError(new Error('x'))).toBe(false);
  });

  it('withDetails keeps fields already set and fills the others', () => {
    const e = new TrellisError('TIMEOUT', 'late', { nic: 1 }).withDetails({ nic: 3, peer: 'p', op: 'o' });
    expect([e.code, e.message, e.nic, e.peer, e.op]).toEqual(['TIMEOUT', 'late', 1, 'p', 'o']);
  });
});

describe('CallSite', () => {
  function submitSomething(): CallSite {
    return new CallSite('submitSomething');
  }

  it('attaches the submitting frames to a later error', () => {
    const site = submitSomething();
    const e = site.attach(new TrellisError('PEER_LOST', 'gone'));
    expect(e.stack).toMatch(/^TrellisError \[PEER_LOST\]: gone\n/);
    expect(e.stack).toMatch(/01-errors\.test\.ts/);
    expect(e.op).toBe('submitSomething');
  });

  it('wraps a non-Trellis error as INTERNAL with the cause', () => {
    const e = submitSomething().attach(new RangeError('bad'));
    expect(e.code).toBe('INTERNAL');
    expect(e.message).toMatch(/submitSomething: RangeError: bad/);
    expect(e.cause).toBeInstanceOf(RangeError);
  });
});
