// TrellisError (codes, details, isTrellisError) and CallSite (the submitting call's stack).
import { describe, expect, it } from 'vitest';
import {
  CallSite,
  captureCallSites,
  isTrellisError,
  TRELLIS_ERROR_CODES,
  TrellisError,
} from '../src/index.js';

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

  it('with captureCallSites(true), attaches the submitting frames to a later error', () => {
    const was = captureCallSites(true);
    let site: CallSite;
    try {
      site = submitSomething();
    } finally {
      captureCallSites(was);
    }
    const e = site.attach(new TrellisError('PEER_LOST', 'gone'));
    expect(e.stack).toMatch(/^TrellisError \[PEER_LOST\]: gone\n/);
    expect(e.stack).toMatch(/01-errors\.test\.ts/);
    expect(e.stack).toMatch(/submitSomething/);
    expect(e.op).toBe('submitSomething');
  });

  it('by default captures nothing: a later error keeps its own stack and gains the op', () => {
    expect(captureCallSites(false)).toBe(process.env.TRELLIS_CAPTURE_STACKS === '1');
    const site = submitSomething();
    const err = new TrellisError('PEER_LOST', 'gone');
    const e = site.attach(err);
    expect(e.stack).toBe(err.stack);
    expect([e.code, e.message, e.op]).toEqual(['PEER_LOST', 'gone', 'submitSomething']);
    expect(captureCallSites(true)).toBe(false);
    captureCallSites(false);
  });

  it('wraps a non-Trellis error as INTERNAL with the cause', () => {
    const e = submitSomething().attach(new RangeError('bad'));
    expect(e.code).toBe('INTERNAL');
    expect(e.message).toMatch(/submitSomething: RangeError: bad/);
    expect(e.cause).toBeInstanceOf(RangeError);
  });
});
