// The engine kit's JS↔addon packing format, defined once: which typed array carries what, field by
// field. NativeEngineBase (native-engine.ts) reads and writes through the layouts below; the C++
// half reads `trellis/format.hpp`, which is generated from this file (`pnpm run gen:format` in
// packages/core) and checked against it by test/13-pack-format.test.ts. Imports only the contract's
// shard alignment, which the generated header carries too (one definition for both expansions).
import { SHARD_ALIGN } from '../imms.js';

/** The typed arrays the format uses, by the name both languages give them. */
type ArrayKind = 'Uint32Array' | 'Float64Array' | 'BigUint64Array';

/** One record kind: the array it travels in, what it is, and its fields in order. */
interface RecordSpec {
  readonly array: ArrayKind;
  readonly doc: string;
  readonly fields: readonly string[];
}

/** Index of each field in a record, and the record's length (`stride`). */
export type Layout<F extends readonly string[]> = { readonly [K in F[number]]: number } & {
  readonly stride: number;
};

function layout<const F extends readonly string[]>(spec: { fields: F }): Layout<F> {
  const out: Record<string, number> = { stride: spec.fields.length };
  spec.fields.forEach((f, i) => {
    out[f] = i;
  });
  return Object.freeze(out) as Layout<F>;
}

const SPECS = {
  completion: {
    array: 'Uint32Array',
    doc: "events.ops: one record per settled operation (code = index into the addon's codeNames, plus POSTED_FLAG; nic = NIC index + 1, 0 for none)",
    fields: ['id', 'code', 'errno', 'nic'],
  },
  regKey: {
    array: 'BigUint64Array',
    doc: 'events.regs[].keys: one record per NIC of a new registration',
    fields: ['addr', 'key'],
  },
  arrival: {
    array: 'Uint32Array',
    doc: 'events.imms: immediates counted since the last batch, one record per distinct value',
    fields: ['imm', 'count'],
  },
  run: {
    array: 'Float64Array',
    doc: 'write(): one record per run of a write (zero = 1 for an immediate-only run)',
    fields: ['peer', 'lane0', 'lanes', 'shards', 'srcOff', 'dstOff', 'len', 'zero'],
  },
  batchWrite: {
    array: 'Float64Array',
    doc: "writeBatch(): one record per write of the batch; its runs follow the previous writes' runs in the run and nicKeys arrays",
    fields: ['op', 'region', 'hasImm', 'imm', 'runs'],
  },
  nicKeys: {
    array: 'BigUint64Array',
    doc: "write() and setPortWindows(): a destination's address and remote key on each of 4 NICs",
    fields: ['addr0', 'rkey0', 'addr1', 'rkey1', 'addr2', 'rkey2', 'addr3', 'rkey3'],
  },
  nicStats: {
    array: 'Float64Array',
    doc: 'stats(): one record per NIC',
    fields: [
      'bytesWritten',
      'writeOps',
      'bytesSent',
      'sendOps',
      'bytesReceived',
      'recvOps',
      'immsReceived',
      'errors',
    ],
  },
  portWindow: {
    array: 'Float64Array',
    doc: 'setPortWindows(): one record per window of a port (its keys in a nicKeys record)',
    fields: ['peer', 'lane', 'lanes', 'region', 'srcOff', 'srcLen', 'dstOff', 'dstLen', 'hasImm', 'imm'],
  },
  wrShape: {
    array: 'Float64Array',
    doc: "expandWrite() (tests): one record per work request a write expands into, in posting order (keyed = 0 for a zero-byte write into the peer's sink)",
    fields: ['peer', 'lane', 'srcOff', 'dstOff', 'len', 'keyed'],
  },
  portStats: {
    array: 'Float64Array',
    doc: "portStats(): one record, then one count per counted immediate (in openPort's order)",
    fields: ['posted', 'settled', 'failed'],
  },
} as const satisfies Record<string, RecordSpec>;

/** A completion's code word carries this bit when the op settled with work still posted. @internal */
export const POSTED_FLAG = 0x100;

/** @internal */ export const COMPLETION = layout(SPECS.completion);
/** @internal */ export const REG_KEY = layout(SPECS.regKey);
/** @internal */ export const ARRIVAL = layout(SPECS.arrival);
/** @internal */ export const RUN = layout(SPECS.run);
/** @internal */ export const NIC_KEYS = layout(SPECS.nicKeys);
/** @internal */ export const BATCH_WRITE = layout(SPECS.batchWrite);
/** @internal */ export const NIC_STATS = layout(SPECS.nicStats);
/** @internal */ export const PORT_WINDOW = layout(SPECS.portWindow);
/** @internal */ export const PORT_STATS = layout(SPECS.portStats);
/** @internal */ export const WR_SHAPE = layout(SPECS.wrShape);

function cxxName(s: string): string {
  return s[0]!.toUpperCase() + s.slice(1);
}

/**
 * The text of `trellis/format.hpp`: the same layouts as C++ constants. Generated, never edited.
 * @internal
 */
export function formatHeader(): string {
  const out = [
    '// Generated from packages/core/src/kit/format.ts by `pnpm run gen:format` (packages/core): do not',
    "// edit. The engine kit's JS↔addon packing format: each struct is one record kind, kStride numbers",
    '// long, with the index of each field.',
    '#pragma once',
    '',
    '#include <cstddef>',
    '#include <cstdint>',
    '',
    'namespace trellis::format {',
    '',
    "// A completion's code word carries this bit when the op settled with work still posted.",
    `constexpr uint32_t kPostedFlag = 0x${POSTED_FLAG.toString(16)};`,
    '',
    '// Shards of a write are cut at multiples of this many bytes (SHARD_ALIGN of the contract).',
    `constexpr uint64_t kShardAlign = ${SHARD_ALIGN};`,
  ];
  for (const [name, spec] of Object.entries(SPECS)) {
    out.push('', `// ${spec.array}, ${spec.doc}.`, `struct ${cxxName(name)} {`);
    out.push(`  static constexpr size_t kStride = ${spec.fields.length};`);
    spec.fields.forEach((f, i) => {
      out.push(`  static constexpr size_t k${cxxName(f)} = ${i};`);
    });
    out.push('};');
  }
  out.push('', '}  // namespace trellis::format', '');
  return out.join('\n');
}
