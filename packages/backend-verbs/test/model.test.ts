// The software RC model's semantics, driven directly through the Verbs seam (native/model_scenarios.cc):
// every return code and work completion is checked.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';

// The scenarios live in a test-only addon (CMake target trellis_verbs_scenarios, built by build:native).
const scenarios = createRequire(import.meta.url)('../build/Release/trellis_verbs_scenarios.node') as {
  modelScenario(name: string): Record<string, unknown>;
};

const EINVAL = 22;
const ENOMEM = 12;
const EOVERFLOW = 75;
const IBV_QPS_ERR = 6;
const IBV_WC_RDMA_WRITE = 1;
const IBV_WC_SEND = 0;
const IBV_WC_RECV = 128;
const IBV_WC_RECV_RDMA_WITH_IMM = 129;

const run = (name: string) => {
  const r = scenarios.modelScenario(name);
  expect(r.error).toBeUndefined();
  return r;
};

describe('rc-model: RC semantics through the seam', () => {
  it('QP state machine: posting outside RTS fails with EINVAL; transitions need their attributes', () => {
    expect(run('states')).toEqual({
      postInReset: EINVAL,
      resetToRtr: EINVAL,
      initWithoutPort: EINVAL,
      init: 0,
      postInInit: EINVAL,
      initToRts: EINVAL,
      rtr: 0,
      postInRtr: EINVAL,
      rts: 0,
      postInRts: 0,
      completions: [{ wrId: 1, status: 'success', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 }],
    });
  });

  it('in-order execution per QP: 200 writes to one address leave the last value; completions in posting order', () => {
    expect(run('order')).toEqual({
      posted: 0,
      sendCompletions: 200,
      inOrder: true,
      finalValue: 199,
      received: [{ wrId: 1000, status: 'success', opcode: IBV_WC_RECV_RDMA_WITH_IMM, imm: 199, byteLen: 8 }],
    });
  });

  it('receiver not ready: with rnr_retry = 1 the write-with-immediate fails RNR_RETRY_EXC; later WRs flush', () => {
    expect(run('rnr-exceeded')).toEqual({
      posted: 0,
      completions: [{ wrId: 7, status: 'RNR retry counter exceeded', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 }],
      afterError: 0,
      flushed: [{ wrId: 8, status: 'Work Request Flushed Error', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 }],
    });
  });

  it('receiver not ready: with rnr_retry = 7 the write waits, then lands once a receive is posted', () => {
    expect(run('rnr-recovers')).toEqual({
      posted: 0,
      beforeRecv: [],
      completions: [{ wrId: 7, status: 'success', opcode: IBV_WC_RDMA_WRITE, byteLen: 64 }],
      received: [{ wrId: 1000, status: 'success', opcode: IBV_WC_RECV_RDMA_WITH_IMM, imm: 7, byteLen: 64 }],
      bytesOk: true,
    });
  });

  it('remote access error on a bad rkey: both QPs go to the error state; the next WR flushes', () => {
    expect(run('remote-access')).toEqual({
      badRkey: [
        { wrId: 1, status: 'remote access error', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 },
        { wrId: 2, status: 'Work Request Flushed Error', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 },
      ],
      responderState: IBV_QPS_ERR,
    });
  });

  it('remote access error on an out-of-bounds write', () => {
    expect(run('out-of-bounds')).toEqual({
      completions: [{ wrId: 1, status: 'remote access error', opcode: IBV_WC_RDMA_WRITE, byteLen: 64 }],
    });
  });

  it('remote access error into a region without REMOTE_WRITE; REMOTE_WRITE without LOCAL_WRITE is refused', () => {
    expect(run('no-remote-write')).toEqual({
      completions: [{ wrId: 1, status: 'remote access error', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 }],
      remoteWithoutLocalWrite: true,
    });
  });

  it('local protection error on a bad lkey', () => {
    expect(run('local-protection')).toEqual({
      completions: [{ wrId: 1, status: 'local protection error', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 }],
    });
  });

  it('CQ overrun: more completions than the CQ holds put it in error (poll fails) and its QP in ERR', () => {
    expect(run('cq-overrun')).toEqual({ pollResult: -EOVERFLOW, qpState: IBV_QPS_ERR });
  });

  it('a full send queue: ENOMEM at the first WR that does not fit; the ones before it are posted', () => {
    const ok = (wrId: number) => ({ wrId, status: 'success', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 });
    expect(run('sq-full')).toEqual({ rc: ENOMEM, badIndex: 4, completions: [ok(0), ok(1), ok(2), ok(3)] });
  });

  it('retry exceeded: the responder gone, a WR fails after timeout × (retry_cnt + 1)', () => {
    const r = run('retry-exceeded');
    expect(r.completions).toEqual([
      { wrId: 1, status: 'transport retry counter exceeded', opcode: IBV_WC_RDMA_WRITE, byteLen: 8 },
    ]);
    // 4.096 µs × 2^8 ≈ 1.05 ms, four times; the model checks timers every millisecond or so.
    expect(r.ms as number).toBeGreaterThanOrEqual(4);
  });

  it('a SEND larger than the receive: LOC_LEN_ERR at the responder, REM_INV_REQ at the requester', () => {
    expect(run('send-too-large')).toEqual({
      requester: [{ wrId: 5, status: 'remote invalid request error', opcode: IBV_WC_SEND, byteLen: 64 }],
      responder: [{ wrId: 77, status: 'local length error', opcode: IBV_WC_RECV, byteLen: 0 }],
    });
  });

  it('connecting from both sides at once ends with one QP pair per side that carries both directions', () => {
    expect(run('simultaneous-connect')).toEqual({
      aWrites: 1,
      aImms: 1,
      bWrites: 1,
      bImms: 1,
      aQps: 2,
      bQps: 2,
    });
  });
});
