// The JS↔addon packing format is defined once, in src/kit/format.ts; the C++ half reads the header
// generated from it. This checks the committed header is that generation, and that both halves use
// the names rather than numbers of their own.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  ARRIVAL,
  COMPLETION,
  formatHeader,
  NIC_KEYS,
  NIC_STATS,
  PORT_STATS,
  PORT_WINDOW,
  POSTED_FLAG,
  REG_KEY,
  RUN,
  WR_SHAPE,
} from '../src/kit/format.js';

const kit = new URL('../src/kit/', import.meta.url);
const read = (p: string) => readFileSync(new URL(p, kit), 'utf8');

describe('the engine kit packing format', () => {
  it('trellis/format.hpp is generated from format.ts (run `pnpm run gen:format` after changing it)', () => {
    expect(read('native/include/trellis/format.hpp')).toBe(formatHeader());
  });

  it('each layout numbers its fields 0..stride-1, in order', () => {
    const layouts = {
      ARRIVAL,
      COMPLETION,
      NIC_KEYS,
      NIC_STATS,
      PORT_STATS,
      PORT_WINDOW,
      REG_KEY,
      RUN,
      WR_SHAPE,
    };
    for (const [name, l] of Object.entries(layouts)) {
      const { stride, ...fields } = l as Record<string, number>;
      expect(Object.values(fields), name).toEqual([...Array(stride).keys()]);
      expect(Object.isFrozen(l), name).toBe(true);
    }
    expect(RUN).toMatchObject({ stride: 8, peer: 0, zero: 7 });
    expect(COMPLETION).toMatchObject({ stride: 4, id: 0, code: 1, errno: 2, nic: 3 });
    expect(NIC_KEYS).toMatchObject({ stride: 8, addr0: 0, rkey0: 1, addr3: 6, rkey3: 7 });
    expect(POSTED_FLAG).toBe(0x100);
  });

  it('the header states every record with its stride and field indexes', () => {
    const h = formatHeader();
    expect(h).toContain(`constexpr uint32_t kPostedFlag = 0x${POSTED_FLAG.toString(16)};`);
    expect(h).toMatch(
      /struct Run \{\n {2}static constexpr size_t kStride = 8;\n {2}static constexpr size_t kPeer = 0;/,
    );
    expect(h).toContain('static constexpr size_t kZero = 7;');
    expect(h).toMatch(/struct PortWindow \{\n {2}static constexpr size_t kStride = 10;/);
    // The shard alignment both expansions cut at (SHARD_ALIGN of the contract).
    expect(h).toContain('constexpr uint64_t kShardAlign = 64;');
  });

  it('both halves pack through the names, not numbers of their own', () => {
    const napi = read('native/include/trellis/napi_engine.hpp');
    expect(napi).toContain('#include "format.hpp"');
    for (const rec of [
      'Completion',
      'RegKey',
      'Arrival',
      'Run',
      'NicKeys',
      'NicStats',
      'PortWindow',
      'PortStats',
    ])
      expect(napi, rec).toContain(`format::${rec}`);
    // The old hand-written strides are gone.
    expect(napi).not.toMatch(/ops\[4 \* i|runs\.Data\(\) \+ 8 \* i|w\.Data\(\) \+ 10 \* i|keys\[2 \* k\]/);
    const js = read('native-engine.ts');
    for (const name of [
      'COMPLETION',
      'ARRIVAL',
      'REG_KEY',
      'RUN',
      'NIC_KEYS',
      'NIC_STATS',
      'PORT_WINDOW',
      'PORT_STATS',
    ])
      expect(js, name).toContain(`${name}.`);
    expect(js).not.toMatch(/i \+= 4\)|new Float64Array\(10 \*|s\[8 \* i/);
  });
});
