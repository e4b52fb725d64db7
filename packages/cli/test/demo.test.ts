// `trellis demo --loopback`: every transfer kind between two loopback engines, verified.
import { describe, expect, it } from 'vitest';
import { runDemo } from '../src/demo.js';

describe('trellis demo (loopback)', () => {
  for (const nics of [1, 2, 4]) {
    it(`verifies every step with ${nics} NIC(s)`, async () => {
      const lines: string[] = [];
      const rows = await runDemo({ nics, seed: nics, log: (l) => lines.push(l) });
      expect(rows.map((r) => r.step)).toEqual([
        'single write 8 MiB',
        'paged writes 512 x 4 KiB',
        'scatter 4 x 1 MiB (by bytes)',
        'barrier',
        'immediate',
        'batch: 16 x 4 KiB + 8 pages + imm',
        'prepared writes 2 posts x 32 x 4 KiB',
      ]);
      expect(rows.every((r) => r.verified)).toBe(true);
      expect(rows[1]!.imms).toBe(512);
      expect(rows[3]!.imms).toBe(1);
      expect(rows[4]!.imms).toBe(1);
      // 16 unsharded singles, 8 pages, 1 immediate; 64 prepared writes.
      expect(rows[5]!.imms).toBe(25);
      expect(rows[6]!.imms).toBe(64);
      expect(rows.map((r) => r.bytes)).toEqual([8 << 20, 512 * 4096, 4 << 20, 0, 0, 24 * 4096, 64 * 4096]);
      expect(rows[0]!.imms).toBe(nics);
      expect(lines.some((l) => l.startsWith('handshake:'))).toBe(true);
    });
  }
});
