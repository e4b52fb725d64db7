// Conformance cases — Bad input: out-of-range offsets, wrong types, bad descriptors, unknown peers,
// detached buffers; what a rejection carries.
import assert from 'node:assert/strict';
import { NetAddr } from '../../addr.js';
import { MrDesc } from '../../desc.js';
import { captureCallSites, TrellisError } from '../../errors.js';
import { lanesBetween } from '../../imms.js';
import type { MrHandle } from '../../types.js';
import { assertBytes, bytesOf, rejects, sleep, throws } from '../util.js';
import { type ConformanceCase, source, target, withGroup } from './shared.js';

export const INPUT_CASES: readonly ConformanceCase[] = [
  {
    id: 'bounds: out-of-range offsets, lengths and pages reject with OUT_OF_RANGE before anything is posted',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1000, 1);
        const { h: dst, expect } = await target(b!, 1000, 2);
        const before = a!.stats().ops.submitted;
        const bad: Array<[string, Promise<void>]> = [
          ['src end', a!.submitSingleWrite({ src, srcOffset: 1, length: 1000, dst: dst.desc, imm: 1 })],
          ['dst end', a!.submitSingleWrite({ src, length: 10, dst: dst.desc, dstOffset: 991, imm: 1 })],
          [
            'overflow',
            a!.submitSingleWrite({
              src,
              srcOffset: Number.MAX_SAFE_INTEGER,
              length: 1,
              dst: dst.desc,
              imm: 1,
            }),
          ],
          ['length past both', a!.submitSingleWrite({ src, length: 1001, dst: dst.desc, imm: 1 })],
          [
            'src page',
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(0, 10),
              srcStride: 100,
              dst: dst.desc,
              dstPages: Uint32Array.of(0, 1),
              dstStride: 100,
              pageBytes: 100,
              imm: 1,
            }),
          ],
          [
            'dst page',
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(0),
              srcStride: 100,
              dst: dst.desc,
              dstPages: Uint32Array.of(9),
              dstStride: 100,
              dstOffset: 1,
              pageBytes: 100,
              imm: 1,
            }),
          ],
          [
            'page index overflow',
            a!.submitPagedWrites({
              src,
              srcPages: Uint32Array.of(0xffff_ffff),
              srcStride: 2 ** 40,
              dst: dst.desc,
              dstPages: Uint32Array.of(0),
              dstStride: 100,
              pageBytes: 100,
              imm: 1,
            }),
          ],
          [
            'scatter src',
            a!.submitScatter({
              src,
              targets: [{ dst: dst.desc, srcOffset: 900, dstOffset: 0, length: 101 }],
              imm: 1,
            }),
          ],
          [
            'scatter dst',
            a!.submitScatter({
              src,
              targets: [{ dst: dst.desc, srcOffset: 0, dstOffset: 999, length: 2 }],
              imm: 1,
            }),
          ],
        ];
        for (const [label, p] of bad) {
          const e = await rejects(p, 'OUT_OF_RANGE', label);
          assert.match(e.message, /^submit\w+: /, `${label}: the message names the call`);
        }
        assert.equal(a!.stats().ops.submitted, before, 'nothing was posted');
        await sleep(20);
        assert.equal(b!.immCounter(1).total, 0, 'no imm arrived');
        assertBytes(bytesOf(dst), expect, 'target untouched');
      }),
  },
  {
    id: 'bad input: wrong types and values reject with INVALID_ARGUMENT and a message naming the field',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 1000, 1);
        const dst = await b!.registerMemory(1000, { remote: true });
        const lanes = lanesBetween(a!.nics, b!.nics);
        const base = { src, length: 10, dst: dst.desc };
        const paged = {
          src,
          srcPages: Uint32Array.of(0),
          srcStride: 10,
          dst: dst.desc,
          dstPages: Uint32Array.of(0),
          dstStride: 10,
          pageBytes: 10,
        };
        const bad: Array<[RegExp, () => Promise<void>]> = [
          [/imm/, () => a!.submitSingleWrite({ ...base, imm: -1 })],
          [/imm/, () => a!.submitSingleWrite({ ...base, imm: 2 ** 32 })],
          [/imm/, () => a!.submitSingleWrite({ ...base, imm: 1.5 })],
          [/shards/, () => a!.submitSingleWrite({ ...base, shards: 0 })],
          [/shards/, () => a!.submitSingleWrite({ ...base, shards: lanes + 1 })],
          [/length/, () => a!.submitSingleWrite({ ...base, length: -1 })],
          [/length/, () => a!.submitSingleWrite({ ...base, length: Number.NaN })],
          [/srcOffset/, () => a!.submitSingleWrite({ ...base, srcOffset: 0.5 })],
          [/dstOffset/, () => a!.submitSingleWrite({ ...base, dstOffset: 2 ** 53 })],
          [/src must be an MrHandle/, () => a!.submitSingleWrite({ ...base, src: {} as MrHandle })],
          [
            /dst must be an MrDesc/,
            () => a!.submitSingleWrite({ ...base, dst: dst.desc.toString() as unknown as MrDesc }),
          ],
          [/request object/, () => a!.submitSingleWrite(null as never)],
          [/timeoutMs/, () => a!.submitSingleWrite({ ...base, timeoutMs: -5 })],
          [/signal/, () => a!.submitSingleWrite({ ...base, signal: {} as AbortSignal })],
          [/equal/, () => a!.submitPagedWrites({ ...paged, dstPages: Uint32Array.of(0, 1) })],
          [/Uint32Array/, () => a!.submitPagedWrites({ ...paged, srcPages: [0] as unknown as Uint32Array })],
          [/srcStride/, () => a!.submitPagedWrites({ ...paged, srcStride: 5 })],
          [/pageBytes/, () => a!.submitPagedWrites({ ...paged, pageBytes: 0 })],
          [/routing/, () => a!.submitScatter({ src, targets: [], routing: 'random' as never })],
          [/routing\.nic/, () => a!.submitScatter({ src, targets: [], routing: { nic: a!.nics } })],
          [/targets/, () => a!.submitScatter({ src, targets: 'x' as never })],
          [/group/, () => a!.submitBarrier({ group: { id: 999, peers: [] }, imm: 1 })],
          [/imm/, () => a!.submitBarrier({ group: a!.addPeerGroup([b!.address]), imm: undefined as never })],
          [/dst must be a NetAddr/, () => a!.submitImm({ dst: 'nope' as never, imm: 1 })],
          [/data must be a Uint8Array/, () => a!.submitSend(b!.address, 'text' as never)],
        ];
        const before = a!.stats().ops.submitted;
        for (const [re, call] of bad) {
          const e = await rejects(call(), 'INVALID_ARGUMENT', String(re));
          assert.match(e.message, re);
        }
        assert.equal(a!.stats().ops.submitted, before);
        throws(() => a!.addPeerGroup([]), 'INVALID_ARGUMENT', 'empty group');
        throws(() => a!.allocUvmWatcher(5 as never), 'INVALID_ARGUMENT', 'watcher callback');
        await rejects(a!.registerMemory(-1), 'INVALID_ARGUMENT', 'negative size');
        await rejects(a!.registerMemory('big' as never), 'INVALID_ARGUMENT', 'string source');
        await rejects(a!.registerMemory(10, { remote: 'yes' as never }), 'INVALID_ARGUMENT', 'remote flag');
      }),
  },
  {
    id: "descriptors: another engine kind, a local-only region, another engine's handle, an unregistered handle",
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 100, 1);
        const dst = await b!.registerMemory(100, { remote: true });
        const foreignOwner = new NetAddr('x-foreign', 1, b!.address.nics);
        const foreign = new MrDesc(foreignOwner, dst.desc.base, 100, dst.desc.nics);
        let e = await rejects(
          a!.submitSingleWrite({ src, length: 1, dst: foreign, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'foreign kind',
        );
        assert.match(e.message, /x-foreign/);
        const local = await b!.registerMemory(100);
        e = await rejects(
          a!.submitSingleWrite({ src, length: 1, dst: local.desc, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'local-only',
        );
        assert.match(e.message, /remote: true/);
        const bsrc = await source(b!, 100, 2);
        e = await rejects(
          a!.submitSingleWrite({ src: bsrc, length: 1, dst: dst.desc, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'other engine handle',
        );
        assert.match(e.message, /another engine/);
        await src.unregister();
        assert.equal(src.registered, false);
        e = await rejects(
          a!.submitSingleWrite({ src, length: 1, dst: dst.desc, imm: 1 }),
          'INVALID_DESCRIPTOR',
          'unregistered',
        );
        assert.match(e.message, /unregistered/);
        await rejects(a!.submitImm({ dst: foreignOwner, imm: 1 }), 'INVALID_DESCRIPTOR', 'foreign address');
        await sleep(10);
        assert.equal(b!.immCounter(1).total, 0);
      }),
  },
  {
    id: 'descriptors: an unknown peer rejects with UNKNOWN_PEER before posting',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const fake = new NetAddr(
          a!.kind,
          b!.address.generation,
          b!.address.nics.map((n) => n.map((x) => x ^ 0xa5)),
        );
        const before = a!.stats().ops.submitted;
        await rejects(a!.submitImm({ dst: fake, imm: 1 }), 'UNKNOWN_PEER', 'imm');
        await rejects(a!.submitSend(fake, Uint8Array.of(1)), 'UNKNOWN_PEER', 'send');
        const src = await source(a!, 10, 1);
        const dst = await b!.registerMemory(10, { remote: true });
        const forged = new MrDesc(fake, dst.desc.base, 10, dst.desc.nics);
        await rejects(
          a!.submitSingleWrite({ src, length: 10, dst: forged, imm: 1 }),
          'UNKNOWN_PEER',
          'write',
        );
        throws(() => a!.addPeerGroup([b!.address, fake]), 'UNKNOWN_PEER', 'group');
        assert.equal(a!.stats().ops.submitted, before);
      }),
  },
  {
    id: 'descriptors: a detached or shrunk registered buffer rejects with DETACHED_BUFFER; a resizable one is refused',
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const ab = new ArrayBuffer(256);
        const src = await a!.registerMemory(ab);
        const dst = await b!.registerMemory(256, { remote: true });
        structuredClone(ab, { transfer: [ab] });
        assert.equal(ab.byteLength, 0);
        const e = await rejects(
          a!.submitSingleWrite({ src, length: 16, dst: dst.desc, imm: 1 }),
          'DETACHED_BUFFER',
          'detached',
        );
        assert.match(e.message, /detached/);
        const gone = new ArrayBuffer(8);
        structuredClone(gone, { transfer: [gone] });
        await rejects(a!.registerMemory(gone), 'DETACHED_BUFFER', 'register detached');
        // A resizable buffer could shrink under the NIC: refused, as a buffer or through a view.
        const resizable = new (ArrayBuffer as unknown as new (n: number, o: object) => ArrayBuffer)(64, {
          maxByteLength: 128,
        });
        const r1 = await rejects(a!.registerMemory(resizable), 'INVALID_ARGUMENT', 'resizable');
        assert.match(r1.message, /resizable/);
        await rejects(
          a!.registerMemory(new Uint8Array(resizable, 8, 8)),
          'INVALID_ARGUMENT',
          'view of resizable',
        );
        assert.equal(a!.stats().regions, 1);
      }),
  },
  // ---------------------------------------------------------------------------- errors
  {
    id: "errors: a rejection carries code, op, peer and, with captureCallSites, the submitting call's stack",
    run: (ctx) =>
      withGroup(ctx, 2, async ({ engines: [a, b] }) => {
        const src = await source(a!, 10, 1);
        const dst = await b!.registerMemory(10, { remote: true });
        await b!.close();
        // By default no stack is captured: code, op and peer still say what failed where.
        const plain = await rejects(
          a!.submitSingleWrite({ src, length: 10, dst: dst.desc, imm: 1 }),
          'PEER_LOST',
          'closed peer',
        );
        assert.ok(plain instanceof TrellisError);
        assert.equal(plain.op, 'submitSingleWrite');
        assert.equal(plain.peer, b!.address.toString());
        const was = captureCallSites(true);
        let submitted: Promise<void>;
        try {
          submitted = a!.submitSingleWrite({ src, length: 10, dst: dst.desc, imm: 1 });
        } finally {
          captureCallSites(was);
        }
        const e = await rejects(submitted, 'PEER_LOST', 'closed peer');
        assert.ok(e instanceof TrellisError);
        assert.equal(e.op, 'submitSingleWrite');
        assert.equal(e.peer, b!.address.toString());
        assert.match(e.stack ?? '', /cases[\\/]input\.(ts|js)/, 'the stack points at the submitting code');
        assert.match(e.stack ?? '', /PEER_LOST/);
      }),
  },
];
